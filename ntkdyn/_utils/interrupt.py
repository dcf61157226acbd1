"""Ctrl-C for the command line, remembered where Python drops the ``KeyboardInterrupt``.

Python raises ``KeyboardInterrupt`` from its SIGINT handler in whatever code runs at that
moment.  When that is a garbage-collection callback (JAX registers one, ``_xla_gc_callback``,
run often while JAX initialises its backend and compiles), the exception is "ignored": it
is printed as ``Exception ignored in: ... KeyboardInterrupt`` and lost, and the command ran
to its end and wrote its outputs (measured: 3 of 3 interrupts at 1.0 s into ``ntkdyn
predict``, and interrupts at 0.3-2.5 s into ``ntkdyn check``).  :func:`install` (the
command, :func:`ntkdyn.cli.console`) sets a handler that also records the interrupt, so
that :func:`ntkdyn._utils.io.staged_output` moves nothing into ``--out`` and
:func:`ntkdyn.cli.main` ends with status 130 once the command returns, and an
``sys.unraisablehook`` that stays silent about the recorded interrupt.  A library caller
who does not install it keeps Python's behaviour (:func:`seen` is then always ``False``).
"""

from __future__ import annotations

import signal
import sys

__all__ = ["install", "raise_if_seen", "replaceable", "seen"]


class _Handler:
    """SIGINT handler: records the interrupt (``seen``), then raises ``KeyboardInterrupt``
    as Python's own handler does."""

    def __init__(self) -> None:
        self.seen = False

    def __call__(self, signum, frame) -> None:
        self.seen = True
        raise KeyboardInterrupt


def install() -> None:
    """Set the recording SIGINT handler (once; in the main thread only, where handlers can
    be set) and the unraisable hook that drops the recorded interrupt's "Exception
    ignored" report (anything else goes to the previous hook)."""
    if isinstance(signal.getsignal(signal.SIGINT), _Handler):
        return
    try:
        signal.signal(signal.SIGINT, _Handler())
    except ValueError:  # not the main thread: Python's handler stays
        return
    previous = sys.unraisablehook

    def hook(unraisable) -> None:
        if isinstance(unraisable.exc_value, KeyboardInterrupt) and seen():
            return
        previous(unraisable)

    sys.unraisablehook = hook


def replaceable(handler) -> bool:
    """Whether a SIGINT ``handler`` is Python's own or this module's (which raises as
    Python's does): code that defers Ctrl-C for a while
    (:class:`ntkdyn.training.checkpoint.InterruptGuard`) may set its own over either."""
    return handler is signal.default_int_handler or isinstance(handler, _Handler)


def seen() -> bool:
    """Whether Ctrl-C was pressed since :func:`install` (``False`` without it)."""
    return bool(getattr(signal.getsignal(signal.SIGINT), "seen", False))


def raise_if_seen() -> None:
    """``KeyboardInterrupt`` if :func:`seen`: for the points that must not go on after an
    interrupt that was dropped (committing outputs)."""
    if seen():
        raise KeyboardInterrupt
