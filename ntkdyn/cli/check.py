"""``ntkdyn check CONFIG``: sanity-check hyperparameters before deployment.

Exit status: 0 when the chosen rate is inside the NTK regime and the target
is reached, 1 when it is outside or the target is missed, 2 for invalid input.
The target is that of the report's headline quantity (``CheckReport.target_of``):
the expected test loss of one random network where it is predicted (the analytic
kernel's default), else the test loss of the network the report names.
"""

from __future__ import annotations

import sys


def register(sub) -> None:
    p = sub.add_parser("check", help="check learning rate, topology and width before deploying")
    p.add_argument("config", help="TOML configuration (see examples/default.toml)")
    p.add_argument("--json", action="store_true",
                   help="print the machine-readable report (ntkdyn/schemas/check.schema.json)")
    p.add_argument("--topologies", default=None,
                   help="comma-separated topologies to compare, e.g. ring,torus,complete")
    p.add_argument("--measure-edge", action="store_true",
                   help="train the real network briefly above lr* to find where it stops "
                        "converging")
    p.add_argument("--edge-steps", type=int, default=300,
                   help="steps per edge trial (default 300)")
    p.add_argument("--cache", default=".cache/ntkdyn-edge",
                   help="cache folder for edge trials (default .cache/ntkdyn-edge)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=run, interrupted=interrupted)


def interrupted(args) -> str:
    """What a Ctrl-C leaves behind: at most the finished edge trials, in the cache."""
    if args.measure_edge:
        return (f"edge trials finished so far are cached in {args.cache} and reused by the "
                "next run")
    return "nothing was written"


def run(args) -> int:
    from ntkdyn._utils.io import check_output
    from ntkdyn.preflight import check

    if args.edge_steps < 1:
        raise ValueError(f"--edge-steps: expected an integer >= 1 (training steps per edge "
                         f"trial), got {args.edge_steps}")
    if args.measure_edge and args.cache:
        check_output(args.cache, "--cache")
    topologies = [] if args.topologies is None else \
        [t.strip() for t in args.topologies.split(",")]
    if any(not t for t in topologies):
        raise ValueError(f"--topologies: expected comma-separated topology names, got "
                         f"{args.topologies!r}")
    report = check(args.config, topologies=topologies, measure_edge=args.measure_edge,
                   edge_steps=args.edge_steps, cache_dir=args.cache,
                   progress=not (args.quiet or args.json))
    sys.stdout.write((report.to_json() if args.json else report.text()) + "\n")
    return report.exit_code
