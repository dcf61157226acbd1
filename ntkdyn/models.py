r"""Fully connected networks in the NTK parameterisation.

:class:`MLP` is ``len(hidden)`` layers of ``Dense -> phi`` and a ``Dense``
readout with ``out`` outputs. Layer ``l`` computes

.. math::  z_l = \frac{W_{std}}{\sqrt{n_{l-1}}}\, h_{l-1} W_l + b_{std}\, b_l,
           \qquad h_l = \phi(z_l), \qquad W_l, b_l \sim \mathcal N(0, 1),

with ``h_0 = x`` and output ``f(x) = z_{L+1}``: exactly neural-tangents'
``stax.Dense(n, W_std, b_std, parameterization='ntk')``, so the network's
infinite-width kernels are those of :mod:`ntkdyn.kernels.analytic`.

Parameters are a tuple of ``(W, b)`` pairs, ``W`` of shape
``(fan_in, fan_out)`` and ``b`` of shape ``(fan_out,)``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ntkdyn._utils import memory
from ntkdyn._utils.checks import is_real
from ntkdyn.activations import ACTIVATION_NAMES, Activation, get_activation
from ntkdyn.kernels.analytic import analytic_kernels

__all__ = ["MLP", "MLPParams", "describe", "init_params", "is_stax_triple"]

MLPParams = tuple[tuple[jax.Array, jax.Array], ...]


@dataclass(frozen=True)
class MLP:
    """A fully connected network ``Dense -> phi -> ... -> Dense`` (NTK parameterisation).

    Attributes
    ----------
    hidden : tuple of int
        Hidden-layer widths (may be empty: a linear model).
    out : int
        Number of outputs ``K``.
    activation : str
        Activation name (see :data:`ntkdyn.activations.ACTIVATION_NAMES`).
    W_std, b_std : float
        Weight and bias standard deviations.
    activation_params : tuple of (str, float)
        Activation parameters, e.g. ``(("slope", 0.1),)`` for ``leaky_relu``;
        a ``dict`` is accepted and stored as a sorted tuple (so the model stays
        hashable).

    Examples
    --------
    >>> model = MLP(hidden=(512, 512), out=10)
    >>> params = model.init(jax.random.PRNGKey(0), in_dim=64)
    >>> model.apply(params, jnp.ones((3, 64))).shape
    (3, 10)
    """

    hidden: tuple[int, ...]
    out: int = 10
    activation: str = "relu"
    W_std: float = 1.4
    b_std: float = 0.1
    activation_params: tuple[tuple[str, float], ...] = ()

    def __post_init__(self) -> None:
        hidden = self.hidden
        if isinstance(hidden, (int, np.integer)):
            hidden = (hidden,)
        if not isinstance(hidden, Sequence) or not all(_is_positive_int(n) for n in hidden):
            raise ValueError(f"hidden: expected a tuple of positive ints, got {self.hidden!r}")
        object.__setattr__(self, "hidden", tuple(int(n) for n in hidden))
        if not _is_positive_int(self.out):
            raise ValueError(f"out: expected a positive int, got {self.out!r}")
        object.__setattr__(self, "out", int(self.out))
        if self.activation not in ACTIVATION_NAMES:
            raise ValueError(
                f"activation: unknown activation {self.activation!r}; "
                f"expected one of {ACTIVATION_NAMES}"
            )
        if not (is_real(self.W_std) and np.isfinite(self.W_std) and self.W_std > 0):
            raise ValueError(f"W_std: expected a finite value > 0, got {self.W_std!r}")
        if not (is_real(self.b_std) and np.isfinite(self.b_std) and self.b_std >= 0):
            raise ValueError(f"b_std: expected a finite value >= 0, got {self.b_std!r}")
        object.__setattr__(self, "W_std", float(self.W_std))
        object.__setattr__(self, "b_std", float(self.b_std))
        params = self.activation_params
        if params is None:
            params = ()
        items = params.items() if isinstance(params, Mapping) else params
        try:
            items = tuple(sorted((str(k), v) for k, v in items))
        except (TypeError, ValueError):
            raise ValueError(
                f"activation_params: expected a dict or (name, value) pairs, got {params!r}"
            ) from None
        object.__setattr__(self, "activation_params", items)
        try:
            get_activation(self.activation, **dict(items))
        except ValueError as err:
            raise ValueError(f"activation_params: {err}") from None

    # ------------------------------------------------------------------ shape

    @property
    def depth(self) -> int:
        """Number of hidden layers ``L`` (the network has ``L + 1`` Dense layers)."""
        return len(self.hidden)

    @property
    def act(self) -> Activation:
        """The :class:`~ntkdyn.activations.Activation` object."""
        return get_activation(self.activation, **dict(self.activation_params))

    def widths(self, in_dim: int) -> tuple[int, ...]:
        """``(n_0, n_1, ..., n_{L+1}) = (in_dim, *hidden, out)``."""
        return (int(in_dim), *self.hidden, self.out)

    def num_params(self, in_dim: int) -> int:
        """``sum_l (n_{l-1} + 1) n_l``: weights plus biases."""
        _check_in_dim(in_dim)
        w = self.widths(in_dim)
        return sum((a + 1) * b for a, b in zip(w[:-1], w[1:], strict=True))

    # -------------------------------------------------------------- network

    def init(self, key: jax.Array, in_dim: int, dtype=jnp.float32) -> MLPParams:
        """Draw ``W_l, b_l ~ N(0, 1)``.

        Keys are split as in ``neural_tangents.stax.serial`` of the matching
        layers: for each layer (activations included) ``key, layer_key =
        split(key)``, and a Dense layer draws ``W`` and ``b`` from
        ``split(layer_key)``. Under ``jax.threefry_partitionable(False)`` (the
        default before JAX 0.5) and ``dtype=float64`` the draws equal
        neural-tangents' ``init_fn(key, (-1, in_dim))`` bit for bit (tested).

        Parameters
        ----------
        key : jax.Array
            PRNG key.
        in_dim : int
            Input feature dimension ``d``.
        dtype : dtype
            Parameter dtype (float32 by default, for training).

        Returns
        -------
        tuple of (W, b)
            ``W_l`` of shape ``(n_{l-1}, n_l)``, ``b_l`` of shape ``(n_l,)``.
        """
        _check_in_dim(in_dim)
        w = self.widths(in_dim)
        params = []
        for layer, (fan_in, fan_out) in enumerate(zip(w[:-1], w[1:], strict=True)):
            if layer > 0:
                key, _ = jax.random.split(key)  # the activation layer's key
            key, layer_key = jax.random.split(key)
            k_w, k_b = jax.random.split(layer_key)
            params.append(
                (
                    jax.random.normal(k_w, (fan_in, fan_out), dtype),
                    jax.random.normal(k_b, (fan_out,), dtype),
                )
            )
        return tuple(params)

    def apply(self, params: MLPParams, x: jax.Array) -> jax.Array:
        """Network outputs ``f(x)``, shape ``(B, out)``.

        ``z_l = (W_std / sqrt(fan_in)) h_{l-1} @ W_l + b_std b_l``,
        ``h_l = phi(z_l)`` for hidden layers; the last ``z`` is returned.
        """
        act = self.act
        h = x
        last = len(params) - 1
        for layer, (W, b) in enumerate(params):
            z = (self.W_std / np.sqrt(W.shape[0])) * (h @ W) + self.b_std * b
            h = z if layer == last else act(z)
        return h

    # -------------------------------------------------------------- kernels

    def kernel(self, x1: np.ndarray, x2: np.ndarray | None = None) -> np.ndarray:
        """Infinite-width traced NTK ``(N1, N2)``; see :func:`ntkdyn.kernels.analytic_ntk`."""
        return self._analytic(x1, x2)[1]

    def nngp(self, x1: np.ndarray, x2: np.ndarray | None = None) -> np.ndarray:
        """Infinite-width NNGP ``(N1, N2)``; see :func:`ntkdyn.kernels.analytic_kernels`."""
        return self._analytic(x1, x2)[0]

    def _analytic(self, x1, x2):
        return analytic_kernels(
            x1, x2, hidden_layers=self.depth, activation=self.act,
            W_std=self.W_std, b_std=self.b_std,
        )  # fmt: skip

    # --------------------------------------------------------- conversions

    def from_neural_tangents_params(self, nt_params) -> MLPParams:
        """Convert ``stax.serial`` params to ``((W, b), ...)``.

        Drops the empty tuples of activation layers and flattens NT's bias of
        shape ``(1, fan_out)`` to ``(fan_out,)``; checks the shapes against
        this model (any input dimension).
        """
        pairs = [p for p in nt_params if not (isinstance(p, (tuple, list)) and len(p) == 0)]
        if len(pairs) != self.depth + 1:
            raise ValueError(
                f"nt_params: expected {self.depth + 1} Dense layers, found {len(pairs)}"
            )
        out = []
        for layer, pair in enumerate(pairs):
            W, b = (jnp.asarray(a) for a in pair)
            fan_out = (*self.hidden, self.out)[layer]
            if W.ndim != 2 or W.shape[1] != fan_out or b.size != fan_out:
                raise ValueError(
                    f"nt_params: layer {layer} has W {W.shape}, b {b.shape}; "
                    f"expected (fan_in, {fan_out}) and ({fan_out},)"
                )
            if layer > 0 and W.shape[0] != out[-1][0].shape[1]:
                raise ValueError(f"nt_params: layer {layer} fan_in {W.shape[0]} does not chain")
            out.append((W, b.reshape(fan_out)))
        return tuple(out)


def is_stax_triple(arch: Any) -> bool:
    """Whether ``arch`` is a neural-tangents ``stax`` triple ``(init_fn, apply_fn, kernel_fn)``."""
    return isinstance(arch, tuple) and len(arch) == 3 and all(callable(f) for f in arch)


def describe(arch: Any) -> dict:
    """The architecture as a JSON-ready dict (written into ``meta`` of every trajectory)."""
    if isinstance(arch, MLP):
        return {"type": "MLP", "hidden": list(arch.hidden), "out": arch.out,
                "activation": arch.activation, "W_std": arch.W_std, "b_std": arch.b_std}
    return {"type": "neural-tangents stax"}


#: peak resident growth of :func:`init_params` per float64 parameter of an MLP, as a multiple
#: of its 8 bytes (the drawn normals and the scaled copy; measured 1.8-2.9 at widths
#: 2,000-12,000, ``tests/test_memory.py``), and the fixed part (the compiled draws)
INIT_PARAM_FACTOR = 2.5
INIT_OVERHEAD_BYTES = 30 * 10**6


def init_bytes(arch: MLP, in_dim: int) -> int:
    """Estimated peak growth of resident memory while :func:`init_params` draws ``arch``."""
    return int(INIT_PARAM_FACTOR * 8 * arch.num_params(in_dim) + INIT_OVERHEAD_BYTES)


def ensure_params_fit(arch: MLP, in_dim: int, limit: int | None = None) -> None:
    """:class:`~ntkdyn._utils.memory.ProblemTooLargeError` naming the width before drawing
    parameters that do not fit (a width of 100,000 is 1e10 float64 parameters: JAX's
    out-of-memory traceback after the draw was what a user got)."""
    n = arch.num_params(in_dim)
    memory.ensure_fits(
        init_bytes(arch, in_dim),
        f"drawing the parameters of the MLP (hidden widths {tuple(arch.hidden)}, {n:.3g} float64 "
        "parameters, needed by the empirical kernel, f0='network' and real training)",
        "use a narrower network ([architecture] width, or MLP(hidden=...)), or the "
        "analytic kernel (prediction.kernel = 'analytic': infinite width, no parameters)",
        limit=limit)


def init_params(arch: Any, in_dim: int, seed: int = 0) -> Any:
    """Parameters of ``arch`` at initialisation, drawn with ``jax.random.PRNGKey(seed)``:
    for an :class:`MLP` its ``((W_1, b_1), ..., (W_{L+1}, b_{L+1}))`` in float64, for a
    stax ``(init_fn, apply_fn, kernel_fn)`` triple what ``init_fn`` returns (a pytree).

    ``in_dim``: the input dimension; ``seed``: the PRNG seed."""
    key = jax.random.PRNGKey(seed)
    if isinstance(arch, MLP):
        ensure_params_fit(arch, in_dim)
        return arch.init(key, in_dim, dtype=np.float64)
    if is_stax_triple(arch):
        return arch[0](key, (-1, in_dim))[1]
    raise ValueError(
        "arch: expected an ntkdyn.models.MLP or a neural-tangents (init_fn, apply_fn, "
        f"kernel_fn) triple, got {type(arch).__name__}")


def _is_positive_int(n) -> bool:
    return isinstance(n, (int, np.integer)) and not isinstance(n, bool) and n > 0


def _check_in_dim(in_dim) -> None:
    if not _is_positive_int(in_dim):
        raise ValueError(f"in_dim: expected a positive int, got {in_dim!r}")
