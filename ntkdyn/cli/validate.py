"""``ntkdyn validate CONFIG --out DIR``: predicted vs observed trajectories (issue 4).

Trains the real nonlinear network and its linearisation peer to peer for the
configuration, predicts the same run with the analytic and/or empirical NTK,
and writes (see :mod:`ntkdyn.validation.harness`):

* ``observed.npz``, ``linearised.npz``, ``predicted_<kernel>.npz`` (Trajectory files);
* ``agreement.json`` and ``agreement.txt`` (relative trajectory errors, statuses,
  "diverged at step k" when a run blew up);
* ``overlay_<kernel>.png/.pdf`` (prediction dashed, nonlinear network solid) and
  ``overlay_linearised.png/.pdf``;
* with ``--widths a,b,c``: one ``width_<w>/`` folder of the above per width, and
  ``width_sweep.png/.pdf`` (error against width, log-log, fitted slope).

Training checkpoints persist in ``DIR/checkpoints/`` until the run completes;
``--resume`` continues an interrupted run from them.
"""

from __future__ import annotations

import sys
from pathlib import Path


def register(sub) -> None:
    p = sub.add_parser("validate", help="train real networks peer to peer and compare them "
                                        "with the prediction")
    p.add_argument("config", help="TOML configuration (see examples/default.toml)")
    p.add_argument("--out", default="out/validate", help="output folder (default out/validate)")
    p.add_argument("--widths", default=None,
                   help="comma-separated widths for a width sweep, e.g. 256,512,1024 "
                        "(default: [validation] widths, else architecture.width)")
    p.add_argument("--kernels", default="both",
                   help="predictions to compare: analytic, empirical, or both (default; also "
                        "written analytic,empirical)")
    p.add_argument("--resume", action="store_true",
                   help="continue an interrupted run from the checkpoints in OUT/checkpoints "
                        "(OUT: --out); a finished run has none and starts afresh")
    p.add_argument("--no-linearised", action="store_true",
                   help="do not train the linearised network")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=run, interrupted=interrupted)


def interrupted(args) -> str:
    """What a Ctrl-C leaves behind: the training checkpoints (written at the interrupt too)
    and the finished width folders; ``--resume`` continues from them."""
    import numpy as np

    out = Path(args.out)
    kept = []
    for ck in _finished_checkpoints(out):
        try:
            with np.load(ck, allow_pickle=False) as data:
                kept.append(f"{ck.stem} at step {int(data['steps_done'])}")
        except (OSError, KeyError, ValueError):
            kept.append(ck.stem)
    widths = sorted(p.name for p in out.glob("width_*") if p.is_dir())
    if not kept and not widths:
        return (f"nothing was kept in {out} (no training chunk had finished); run the same "
                "command again to start afresh")
    parts = []
    if kept:
        parts.append(f"training checkpoints kept in {out / 'checkpoints'} ("
                     + ", ".join(kept) + ")")
    if widths:
        parts.append(f"finished width folders kept in {out} ({', '.join(widths)})")
    return "; ".join(parts) + "; add --resume to the same command to continue from them"


def _finished_checkpoints(out: Path) -> list[Path]:
    """The training checkpoints in ``out/checkpoints`` (not the ``.partial.npz`` files a
    write in progress leaves)."""
    return [ck for ck in sorted((out / "checkpoints").glob("*.npz"))
            if not ck.name.endswith(".partial.npz")]


def _check_options(args, cfg) -> None:
    """``--widths`` / ``--kernels`` checked as :func:`ntkdyn.validation.harness.validate`
    checks its ``widths`` / ``kernels``, the error naming the option (``--widths: ...``)."""
    from ntkdyn.validation.harness import kernels_arg, widths_arg

    for option, check in (("--widths", lambda: args.widths is None or widths_arg(
            args.widths, cfg)), ("--kernels", lambda: kernels_arg(args.kernels))):
        try:
            check()
        except ValueError as exc:
            raise ValueError(f"{option}: {str(exc).split(': ', 1)[-1]}") from None


def run(args) -> int:
    from ntkdyn._utils.io import check_output
    from ntkdyn.config.schema import load_config
    from ntkdyn.validation.harness import validate

    cfg = load_config(args.config)
    check_output(args.out)
    _check_options(args, cfg)
    if args.resume and not _finished_checkpoints(Path(args.out)):
        print(f"ntkdyn validate: --resume: no checkpoints in {Path(args.out) / 'checkpoints'} "
              "(a finished run removes them); starting afresh", file=sys.stderr)
    result = validate(cfg, out=args.out, widths=args.widths, kernels=args.kernels,
                      resume=args.resume, progress=not args.quiet,
                      linearised=not args.no_linearised)
    print(result.summary())
    sweep = len(result.runs) > 1
    print(f"wrote {args.out}/agreement.json, agreement.txt"
          + (", width_sweep.png and per-width folders width_*/ with their overlay figures"
             if sweep else " and overlay figures"))
    return 0
