"""``ntkdyn validate CONFIG``: predicted vs observed trajectories (issue 4)."""

from __future__ import annotations


def register(sub) -> None:  # placeholder until the command lands
    return None
