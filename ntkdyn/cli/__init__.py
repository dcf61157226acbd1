"""Command line: ``ntkdyn predict | check | validate CONFIG.toml``.

Exit status: 0 success; 1 a negative answer (``check``: outside the NTK
regime or target missed); 2 invalid input (bad config, bad or corrupt data
files, an output folder that cannot be written, a problem that does not fit in
memory), with a one-line message naming the culprit; 3 the bounded search for the
stable set could not decide (one line saying where); 130 interrupted (Ctrl-C),
with a line saying what was kept.  The output folder is checked before any
computation; outputs are written to a temporary folder first and moved into
``--out`` only when complete: a failed run leaves nothing half-written.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from ntkdyn._utils import interrupt
from ntkdyn._utils.io import OutputError, check_output, staged_output
from ntkdyn._utils.memory import ProblemTooLargeError

__all__ = ["COMMANDS", "OutputError", "build_parser", "check_output", "console", "main",
           "staged_output"]


def _one_line(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    if isinstance(exc, OSError) and exc.filename is not None and str(exc.filename) not in text:
        text = f"{exc.filename}: {text}"
    return " ".join(text.split())


def build_parser() -> argparse.ArgumentParser:
    from ntkdyn import __version__

    parser = argparse.ArgumentParser(
        prog="ntkdyn",
        description="Predict peer-to-peer learning dynamics of wide networks (NTK regime).")
    parser.add_argument("--version", action="version", version=f"ntkdyn {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in COMMANDS:
        importlib.import_module(f".{name}", __package__).register(sub)
    return parser


#: One module per subcommand in ``ntkdyn/cli/``, each with ``register(subparsers)``.
COMMANDS = ("predict", "check", "validate")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code = int(args.func(args))
        interrupt.raise_if_seen()  # a Ctrl-C that Python dropped (ntkdyn._utils.interrupt)
        return code
    except KeyboardInterrupt:
        pass  # said below, once the interrupted frames (and their progress bars) are gone
    except (ValueError, OSError, ProblemTooLargeError) as exc:
        print(f"ntkdyn {args.command}: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except RuntimeError as exc:
        from ntkdyn.dynamics.stability import StabilityUndecided

        if not isinstance(exc, StabilityUndecided):
            raise
        print(f"ntkdyn {args.command}: stability undecided: {_one_line(exc)}", file=sys.stderr)
        return 3
    kept = args.interrupted(args) if hasattr(args, "interrupted") else "nothing was kept"
    print(f"\nntkdyn {args.command}: interrupted (Ctrl-C); {kept}", file=sys.stderr)
    return 130


def console(argv: list[str] | None = None) -> None:
    """The ``ntkdyn`` command (and ``python -m ntkdyn``): :func:`main`, then exit with its
    status.  After Ctrl-C (status 130) the process ends with :func:`os._exit` once the
    output streams are flushed, skipping the interpreter's teardown: an interrupt that
    lands while XLA compiles leaves its compile threads running, and tearing the
    interpreter down under them crashed with a segmentation fault (exit 139, 3 of 3 tries
    at 4-5 s into ``ntkdyn predict examples/default.toml``) after the "interrupted" line
    had been printed.  The staging folder is already removed by then (:func:`main`
    returns only after its ``finally`` blocks), so nothing is left half-written.  Ctrl-C
    is recorded from here on (:func:`ntkdyn._utils.interrupt.install`), also where Python
    drops the ``KeyboardInterrupt`` (in JAX's garbage-collection callback); before this,
    while ``import ntkdyn`` imports JAX (about 1.5 s), Python's own handler prints its
    traceback."""
    interrupt.install()
    try:
        code = main(argv)
    except KeyboardInterrupt:  # before a command's own handler (parsing, imports)
        print("\nntkdyn: interrupted (Ctrl-C); nothing was written", file=sys.stderr)
        code = 130
    if code == 130:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):  # closed or broken pipe: nothing more to say
                pass
        os._exit(130)
    sys.exit(code)


if __name__ == "__main__":  # pragma: no cover
    console()
