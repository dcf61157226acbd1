"""``ntkdyn check CONFIG``: sanity-check hyperparameters (issue 8)."""

from __future__ import annotations


def register(sub) -> None:  # placeholder until the command lands
    return None
