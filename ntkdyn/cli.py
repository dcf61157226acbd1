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
import json
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


def _cmd_predict(args) -> int:
    from . import pipeline
    from .config import load_config
    from .experiment import from_config
    from .plotting import plot_trajectory

    cfg = load_config(args.config)
    exp = from_config(cfg)
    t = cfg.training
    traj = pipeline.predict(exp.arch, exp.parts, exp.mixing, t.lr, t.algorithm,
                            cfg.steps.astype(float) if t.continuous else cfg.steps,
                            kernel=cfg.prediction.kernel, seed=cfg.seed,
                            continuous=t.continuous, progress=not args.quiet)
    traj = _with_config(traj, cfg)
    with staged_output(args.out) as tmp:
        traj.save(tmp / "trajectory.npz")
        summary = {
            "status": traj.status,
            "diverged_at": traj.diverged_at,
            "final_step": float(traj.steps[-1]) if len(traj.steps) else None,
            "final_train_loss_mean": _last_mean(traj.train_loss),
            "final_test_loss_mean": _last_mean(traj.test_loss),
            "final_test_acc_mean": _last_mean(traj.test_acc),
            "final_consensus_dist_mean": _last_mean(traj.consensus_dist),
            "stability": traj.metadata.get("stability"),
            "config": cfg.to_dict(),
        }
        (tmp / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
        (tmp / "summary.txt").write_text(traj.summary() + "\n")
        title = (f"{t.algorithm.upper()} on {cfg.topology.name} ({cfg.partition.agents} agents, "
                 f"{cfg.partition.scheme}), {cfg.prediction.kernel} NTK, lr={t.lr:g}")
        plot_trajectory(traj, tmp / "trajectory.png", title=title)
    print(traj.summary())
    print(f"wrote {Path(args.out) / 'trajectory.npz'}, summary.json, summary.txt, "
          "trajectory.png")
    return 0


def _last_mean(arr):
    return None if arr is None or len(arr) == 0 else float(arr[-1].mean())


def _with_config(traj, cfg):
    import dataclasses

    return dataclasses.replace(traj, metadata=dict(traj.metadata, config=cfg.to_dict()))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ntkdyn",
        description="Predict peer-to-peer learning dynamics of wide networks (NTK regime).")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("predict", help="predict trajectories for a TOML configuration")
    p.add_argument("config", help="TOML configuration (see examples/default.toml)")
    p.add_argument("--out", default="out/predict", help="output folder (default out/predict)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_predict)
    for extra in _EXTRA_COMMANDS:
        extra(sub)
    return parser


_EXTRA_COMMANDS: list = []


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
