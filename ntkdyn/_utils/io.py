"""Output folders: check one is writable before computing, write into it atomically;
the JSON text every report file uses.

Used by the command line (``ntkdyn predict | check | validate --out``) and by
:func:`ntkdyn.validation.harness.validate` when it writes its report.
"""

from __future__ import annotations

import contextlib
import json
import math
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from ntkdyn._utils import interrupt

__all__ = ["OutputError", "check_output", "json_text", "staged_output"]


def _plain(obj: Any) -> Any:
    """``obj`` with numpy values as Python ones, ``nan`` as ``None``, ``+-inf`` as the
    strings ``"inf"`` / ``"-inf"`` and anything else unknown as its ``str``."""
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _plain(obj.tolist())
    if isinstance(obj, np.generic):
        return _plain(obj.item())
    if isinstance(obj, float):
        if math.isnan(obj):
            return None
        if math.isinf(obj):
            return "inf" if obj > 0 else "-inf"
        return obj
    if obj is None or isinstance(obj, (str, int)):  # bool is an int
        return obj
    return str(obj)


def json_text(obj: Any, indent: int | None = 2) -> str:
    """Standard JSON (RFC 8259) for a report: ``NaN`` (a value that does not exist, e.g.
    no sufficient bound) becomes ``null``, ``+-inf`` (stable at every rate, no stable
    rate) the strings ``"inf"`` / ``"-inf"``, numpy numbers plain numbers.  ``json.dumps``
    alone writes bare ``NaN`` / ``Infinity``, which ``jq`` and most parsers refuse."""
    return json.dumps(_plain(obj), indent=indent, allow_nan=False)


@contextlib.contextmanager
def staged_output(out: str | Path):
    """Yield a temporary folder whose files are moved into ``out`` on success only (not
    after a Ctrl-C that Python dropped: :func:`ntkdyn._utils.interrupt.raise_if_seen`)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        yield tmp
        interrupt.raise_if_seen()
        out.mkdir(parents=True, exist_ok=True)
        items = sorted(tmp.iterdir())
        for item in items:  # all checked before any is moved: nothing half-written
            target = out / item.name
            if target.exists() and target.is_dir() != item.is_dir():
                kind = "folder" if target.is_dir() else "file"
                raise OutputError(f"--out: {target} is a {kind} where the output "
                                  f"{'folder' if item.is_dir() else 'file'} {item.name} goes; "
                                  "remove it or choose another folder (nothing was written)")
        for item in items:
            target = out / item.name
            if target.is_dir() and item.is_dir():
                shutil.rmtree(target)
            item.replace(target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


class OutputError(ValueError):
    """The output folder cannot be written (the message names the path)."""


def check_output(out: str | Path, option: str = "--out", files: tuple[str, ...] = ()) -> Path:
    """Check, before anything is computed, that folder ``out`` can be created or written.

    Refuses (``OutputError`` naming the path) an existing file, a path below a file, a
    folder without write permission and, for the output ``files`` the command will write
    there, a folder already in the place of one; creates nothing (the write test uses a
    temporary file in the nearest existing folder, removed at once).
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise OutputError(f"{option}: {out} exists and is not a folder; choose a folder path")
    for name in files:
        if (out / name).is_dir():
            raise OutputError(f"{option}: {out / name} is a folder where the output file "
                              f"{name} goes; remove it or choose another folder")
    existing = out
    while not existing.exists():
        if existing.is_symlink():
            raise OutputError(f"{option}: {existing} is a broken symbolic link")
        existing = existing.parent
    if not existing.is_dir():
        raise OutputError(f"{option}: {out} lies under {existing}, which is a file, not a "
                          "folder")
    try:
        with tempfile.TemporaryFile(dir=existing, prefix=".ntkdyn-write-test-"):
            pass
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise OutputError(f"{option}: cannot write to {existing} ({reason}); choose a "
                          "writable folder") from None
    return out
