"""Command line: ``ntkdyn predict | check | validate CONFIG.toml``.

Exit status: 0 success; 1 a negative answer (``check``: outside the NTK
regime or target missed); 2 invalid input (bad config, bad or corrupt data
files, an output folder that cannot be written, a problem that does not fit in
memory), with a one-line message naming the culprit; 130 interrupted (Ctrl-C),
with a line saying what was kept.  The output folder is checked before any
computation; outputs are written to a temporary folder first and moved into
``--out`` only when complete: a failed run leaves nothing half-written.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import shutil
import sys
import tempfile
from pathlib import Path

from .memory import ProblemTooLargeError


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


def _one_line(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    if isinstance(exc, OSError) and exc.filename is not None and str(exc.filename) not in text:
        text = f"{exc.filename}: {text}"
    return " ".join(text.split())


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="ntkdyn",
        description="Predict peer-to-peer learning dynamics of wide networks (NTK regime).")
    parser.add_argument("--version", action="version", version=f"ntkdyn {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in COMMANDS:
        importlib.import_module(f".commands.{name}", __package__).register(sub)
    return parser


#: One module per subcommand in ``ntkdyn/commands/``, each with ``register(subparsers)``.
COMMANDS = ("predict", "check", "validate")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        kept = args.interrupted(args) if hasattr(args, "interrupted") else "nothing was kept"
        print(f"\nntkdyn {args.command}: interrupted (Ctrl-C); {kept}", file=sys.stderr)
        return 130
    except (ValueError, OSError, ProblemTooLargeError) as exc:
        print(f"ntkdyn {args.command}: error: {_one_line(exc)}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
