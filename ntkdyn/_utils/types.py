"""Type aliases of the public signatures (numpy only; annotations, checked at run time by
the functions themselves, with errors naming the argument)."""

from __future__ import annotations

from numpy.typing import ArrayLike

__all__ = ["ArrayLike", "Rates", "Steps"]

#: one learning rate for every agent, or one per agent (``(Q,)``)
Rates = float | ArrayLike
#: a horizon ``T`` (records at steps ``0..T``) or the steps (times, for gradient flow) to record
Steps = int | ArrayLike
