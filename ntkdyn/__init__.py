"""ntkdyn: closed-form predictions of peer-to-peer learning dynamics of wide networks."""

from . import _config  # noqa: F401  (enables float64 in JAX)
