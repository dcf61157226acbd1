"""Command line: ``ntkdyn predict | check | validate CONFIG.toml``.

Exit status: 0 success; 1 a negative answer (``check``: outside the NTK
regime or target missed); 2 invalid input (bad config, bad data, a problem
that does not fit in memory), with a one-line message naming the culprit.
Outputs are written to a temporary folder first and moved into ``--out`` only
when complete: a failed run leaves nothing half-written.
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ntkdyn",
        description="Predict peer-to-peer learning dynamics of wide networks (NTK regime).")
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
    except (ValueError, FileNotFoundError, ProblemTooLargeError) as exc:
        print(f"ntkdyn {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
