"""``ntkdyn validate CONFIG --out DIR``: predicted vs observed trajectories (issue 4).

Trains the real nonlinear network and its linearisation peer to peer for the
configuration, predicts the same run with the analytic and/or empirical NTK,
and writes (see :mod:`ntkdyn.harness`):

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


def register(sub) -> None:
    p = sub.add_parser("validate", help="train real networks peer to peer and compare them "
                                        "with the prediction")
    p.add_argument("config", help="TOML configuration (see examples/default.toml)")
    p.add_argument("--out", default="out/validate", help="output folder (default out/validate)")
    p.add_argument("--widths", default=None,
                   help="comma-separated widths for a width sweep, e.g. 256,512,1024 "
                        "(default: [validation] widths, else architecture.width)")
    p.add_argument("--kernels", default="analytic,empirical",
                   help="predictions to compare: analytic, empirical or both (default both)")
    p.add_argument("--resume", action="store_true",
                   help="continue an interrupted run from DIR/checkpoints")
    p.add_argument("--no-linearised", action="store_true",
                   help="do not train the linearised network")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..harness import validate

    result = validate(args.config, out=args.out, widths=args.widths, kernels=args.kernels,
                      resume=args.resume, progress=not args.quiet,
                      linearised=not args.no_linearised)
    print(result.summary())
    print(f"wrote {args.out}/agreement.json, agreement.txt and overlay figures")
    return 0
