"""Output folders: check one is writable before computing, write into it atomically.

Used by the command line (``ntkdyn predict | check | validate --out``) and by
:func:`ntkdyn.validation.harness.validate` when it writes its report.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from pathlib import Path

__all__ = ["OutputError", "check_output", "staged_output"]


@contextlib.contextmanager
def staged_output(out: str | Path):
    """Yield a temporary folder whose files are moved into ``out`` on success only."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        yield tmp
        out.mkdir(parents=True, exist_ok=True)
        for item in tmp.iterdir():
            target = out / item.name
            if target.is_dir() and item.is_dir():
                shutil.rmtree(target)
            item.replace(target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


class OutputError(ValueError):
    """The output folder cannot be written (the message names the path)."""


def check_output(out: str | Path, option: str = "--out") -> Path:
    """Check, before anything is computed, that folder ``out`` can be created or written.

    Refuses (``OutputError`` naming the path) an existing file, a path below a file and a
    folder without write permission; creates nothing (the write test uses a temporary
    file in the nearest existing folder, removed at once).
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise OutputError(f"{option}: {out} exists and is not a folder; choose a folder path")
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
