"""The kernel-space problem: everything the solver needs, validated and sorted.

Layout (fixed, so the mathematics stays readable; see STYLE.md):

* samples are **sample-major, outputs last**; a *row* is one sample (traced
  kernel, ``Theta_scalar (x) I_K``) or one ``(sample, output)`` pair (full
  kernel, row index ``i K + k``);
* samples are **sorted by agent** once, so agent ``q`` owns the contiguous
  rows ``offsets[q] * rps : offsets[q+1] * rps`` (``rps`` = rows per sample);
* the residual at initialisation ``f_0(X) - Y`` is stored in the same row
  layout with ``C0`` columns (``K`` traced, ``1`` full).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ntkdyn._utils.checks import (
    agent_indices,
    as_array,
    as_float_array,
    check_f0_pair,
    check_shape,
)
from ntkdyn._utils.types import ArrayLike
from ntkdyn.graphs.sequences import MixingProcess, resolve_mixing
from ntkdyn.losses import check_logit_scale, check_loss, class_targets


@dataclass(frozen=True)
class KernelProblem:
    """A validated prediction problem in kernel space (samples sorted by agent).

    Attributes
    ----------
    kernel : (R, R) float64
        Training NTK, rows/columns sorted by agent.
    residual0 : (R, C0) float64
        ``f_0(X) - Y`` in row layout.
    y_train, f0_train : (N, K)
        Targets and initial outputs (sorted by agent).
    labels_train : (N,) int
        ``argmax`` of the targets.
    offsets : tuple of Q + 1 ints
        Sample offsets of the agents.
    mixing : (Q, Q) float64
        The mixing matrix (the expected one for a random or periodic ``process``).
    traced : bool
        ``True`` for ``Theta_scalar (x) I_K`` (rows = samples).
    kernel_test, y_test, f0_test, labels_test :
        Test-train kernel ``(R_test, R)`` and test targets, or ``None``.
    order : (N,) int
        ``order[i]`` is the caller's index of sorted sample ``i``.
    process : MixingProcess or None
        A time-varying or random mixing sequence (:mod:`ntkdyn.graphs.sequences`); ``mixing``
        then holds its expected matrix (the period average for a periodic one).
        ``None``: the static ``mixing``.
    loss : "mse" or "cross_entropy"
        The local loss: ``L_q = 1/(2 N_q) sum_{i in q} ||f_i - y_i||^2`` (default), or
        softmax cross-entropy ``L_q = (1/N_q) sum_{i in q} CE(softmax(s f_i), y_i)`` with
        one-hot ``y`` (``theory/cross_entropy.md``).
    logit_scale : float
        ``s`` above (inverse temperature; cross-entropy only, 1 by default).
    """

    kernel: np.ndarray
    residual0: np.ndarray
    y_train: np.ndarray
    f0_train: np.ndarray
    labels_train: np.ndarray
    offsets: tuple[int, ...]
    mixing: np.ndarray
    traced: bool
    kernel_test: np.ndarray | None
    y_test: np.ndarray | None
    f0_test: np.ndarray | None
    labels_test: np.ndarray | None
    order: np.ndarray
    process: MixingProcess | None = None
    loss: str = "mse"
    logit_scale: float = 1.0

    @property
    def num_agents(self) -> int:
        return len(self.offsets) - 1

    @property
    def num_train(self) -> int:
        return int(self.offsets[-1])

    @property
    def num_outputs(self) -> int:
        return int(self.y_train.shape[1])

    @property
    def rows_per_sample(self) -> int:
        return 1 if self.traced else self.num_outputs

    @property
    def counts(self) -> np.ndarray:
        return np.diff(np.asarray(self.offsets))

    @property
    def has_test(self) -> bool:
        return self.kernel_test is not None

    def agent_block(self, q: int) -> np.ndarray:
        """Agent ``q``'s diagonal kernel block ``Theta_qq`` (its rows and columns)."""
        r = self.rows_per_sample
        s, e = self.offsets[q] * r, self.offsets[q + 1] * r
        return self.kernel[s:e, s:e]


def _asymmetry(kernel: np.ndarray, block: int = 1024) -> tuple[float, float]:
    """``max |K - K^T|`` and ``max |K|``, computed in row blocks (no full copy)."""
    asym, scale = 0.0, 1e-300
    for s in range(0, kernel.shape[0], block):
        rows = kernel[s : s + block]
        asym = max(asym, float(np.max(np.abs(rows - kernel[:, s : s + block].T))))
        scale = max(scale, float(np.max(np.abs(rows))))
    return asym, scale


#: A training kernel is refused when ``lambda_min < -PSD_RTOL * |lambda|_max`` (float64 input;
#: ``100 eps`` of the input's precision for lower-precision input, 1.2e-5 for float32).
PSD_RTOL = 1e-8
PSD_DENSE_MAX = 512  # rows up to which the eigenvalues are computed exactly (eigvalsh)
PSD_LANCZOS_STEPS = 80


def _extreme_eigenvalues(kernel: np.ndarray) -> tuple[float, float, bool]:
    """``(lambda_min, lambda_max, exact)`` of a symmetric matrix.

    Up to :data:`PSD_DENSE_MAX` rows: exact (``eigvalsh``).  Above: the extreme Ritz values
    of :data:`PSD_LANCZOS_STEPS` Lanczos steps (full reorthogonalisation, fixed start) --
    ``theta_min >= lambda_min`` and ``theta_max <= lambda_max``, so a negative
    ``theta_min`` is a certain upper bound on ``lambda_min``; the cost is that many
    products with the matrix (one read of it each).
    """
    n = kernel.shape[0]
    if n <= PSD_DENSE_MAX:
        vals = np.linalg.eigvalsh(kernel)
        return float(vals[0]), float(vals[-1]), True
    import scipy.linalg

    m = min(PSD_LANCZOS_STEPS, n)
    basis = np.empty((m, n))
    alpha, beta = np.empty(m), np.empty(m)
    v = np.random.default_rng(0).standard_normal(n)
    basis[0] = v / np.linalg.norm(v)
    steps = m
    for j in range(m):
        w = kernel @ basis[j]
        alpha[j] = basis[j] @ w
        for _ in range(2):  # full reorthogonalisation, twice is enough
            w -= basis[: j + 1].T @ (basis[: j + 1] @ w)
        beta[j] = np.linalg.norm(w)
        if j + 1 == m or beta[j] <= 1e-12 * max(abs(alpha[: j + 1]).max(), 1e-300):
            steps = j + 1
            break
        basis[j + 1] = w / beta[j]
    theta = scipy.linalg.eigvalsh_tridiagonal(alpha[:steps], beta[: steps - 1])
    return float(theta[0]), float(theta[-1]), steps == n


def check_psd(kernel: np.ndarray, name: str = "kernel_train", rtol: float = PSD_RTOL) -> None:
    """Refuse a symmetric ``kernel`` that is not positive semi-definite.

    An NTK is a Gram matrix ``J J^T``: its eigenvalues are >= 0.  Refused (``ValueError``
    naming ``name`` and the smallest eigenvalue relative to the largest in modulus) when
    ``lambda_min < -rtol * max |lambda|`` (``rtol = 1e-8`` by default: rounding of a
    float64 Gram matrix is ~1e-16 relative), which covers indefinite and negative-definite
    kernels; with such a kernel gradient descent runs uphill along the negative directions
    at every rate.  Exact up to :data:`PSD_DENSE_MAX` rows; above, Lanczos
    (:func:`_extreme_eigenvalues`): every refusal is certain, and negative eigenvalues
    separated from the rest of the spectrum by less than about ``1e-4 lambda_max`` may
    go unnoticed (measured cost: README, "Non-PSD kernels").
    """
    lam_min, lam_max, exact = _extreme_eigenvalues(kernel)
    scale = max(abs(lam_min), abs(lam_max))
    if lam_min < -rtol * scale:
        what = "negative definite" if lam_max < 0 else (
            "negative semi-definite" if lam_max <= rtol * scale else "indefinite")
        bound = "" if exact else " (at most; Lanczos estimate)"
        article = "an" if what == "indefinite" else "a"
        raise ValueError(
            f"{name}: expected a positive semi-definite kernel (an NTK is J J^T), got "
            f"{article} {what} one: smallest eigenvalue {lam_min:.6g}{bound} = "
            f"{lam_min / scale:.3g} "
            f"x the largest in modulus ({scale:.6g}); tolerance -{rtol:.3g} x the largest")


def _labels(y: np.ndarray) -> np.ndarray:
    return np.argmax(y, axis=1).astype(np.int64)


def make_problem(
    kernel_train: ArrayLike,
    y_train: ArrayLike,
    agent: ArrayLike,
    mixing: ArrayLike | MixingProcess,
    *,
    f0_train: ArrayLike | None = None,
    kernel_test_train: ArrayLike | None = None,
    y_test: ArrayLike | None = None,
    f0_test: ArrayLike | None = None,
    loss: str = "mse",
    logit_scale: float = 1.0,
) -> KernelProblem:
    """Validate the arrays of :func:`ntkdyn.predict_from_kernels` and sort by agent.

    ``loss="cross_entropy"`` takes one-hot or integer-label targets
    (:func:`class_targets`; ``K`` from ``f0_train``, a full kernel, or the largest label).

    Raises ``ValueError`` naming the offending argument for: wrong shapes,
    non-finite values, one of ``f0_train`` / ``f0_test`` without the other (with a test
    set: they describe one network), a non-stochastic or disconnected ``mixing``, an agent
    index out of range or an agent without samples, a non-symmetric kernel, a kernel that
    is not positive semi-definite (:func:`check_psd`: ``lambda_min < -1e-8 max |lambda|``
    for float64 input, ``-100 eps`` of a lower input precision).
    """
    loss = check_loss(loss)
    logit_scale = check_logit_scale(logit_scale, loss)
    if kernel_test_train is not None and y_test is not None:
        check_f0_pair(f0_train, f0_test)
    if loss == "cross_entropy":
        y_train, y_test = _label_targets(y_train, y_test, f0_train, kernel_train)
    y_train = as_float_array("y_train", y_train, ndim=2)
    n, k = y_train.shape
    if n == 0:
        raise ValueError("y_train: expected at least one training sample, got 0")
    if k == 0:
        raise ValueError(f"y_train: expected at least one output column, got shape {(n, k)}")
    kernel, traced = _checked_kernel(kernel_train, n, k, agent)
    agent = np.asarray(agent)
    check_shape("agent", agent, (n,), "one agent index per training sample")
    mixing, process = resolve_mixing(mixing)
    q_count = mixing.shape[0]
    agent, counts = agent_indices(agent, q_count)

    f0_train = (
        np.zeros_like(y_train) if f0_train is None else as_float_array("f0_train", f0_train, 2)
    )
    check_shape("f0_train", f0_train, (n, k), "same as y_train")

    order = np.argsort(agent, kind="stable")
    identity = bool(np.all(order == np.arange(n)))
    rps = 1 if traced else k
    if not identity:
        rows = (order[:, None] * rps + np.arange(rps)[None, :]).ravel()
        kernel = kernel[np.ix_(rows, rows)]
        y_train, f0_train = y_train[order], f0_train[order]
    residual0 = (f0_train - y_train).reshape(n * rps, k // rps)
    offsets = tuple(int(x) for x in np.concatenate([[0], np.cumsum(counts)]))
    kt, yt, ft, lt = _test_arrays(kernel_test_train, y_test, f0_test, n, k, rps,
                                  None if identity else order)

    return KernelProblem(
        kernel=np.ascontiguousarray(kernel),
        residual0=np.ascontiguousarray(residual0),
        y_train=y_train,
        f0_train=f0_train,
        labels_train=_labels(y_train),
        offsets=offsets,
        mixing=mixing,
        traced=traced,
        kernel_test=None if kt is None else np.ascontiguousarray(kt),
        y_test=yt,
        f0_test=ft,
        labels_test=lt,
        order=order,
        process=process,
        loss=loss,
        logit_scale=logit_scale,
    )


def _label_targets(y_train, y_test, f0_train, kernel_train):
    """Cross-entropy targets as one-hot rows (:func:`class_targets`); integer labels take
    ``K`` from ``f0_train``, a full kernel, or the largest label."""
    k_hint = None
    y_train = as_array("y_train", y_train)
    if np.ndim(y_train) == 1:
        n_lab = np.shape(y_train)[0]
        if f0_train is not None and np.ndim(f0_train) == 2:
            k_hint = np.shape(f0_train)[1]
        elif n_lab and np.ndim(kernel_train) == 2 and np.shape(kernel_train)[0] % n_lab == 0 \
                and np.shape(kernel_train)[0] > n_lab:
            k_hint = np.shape(kernel_train)[0] // n_lab
    y_train = class_targets("y_train", y_train, k_hint)
    if y_test is not None:
        y_test = class_targets("y_test", y_test, y_train.shape[1])
    return y_train, y_test


def _checked_kernel(kernel_train, n: int, k: int, agent) -> tuple[np.ndarray, bool]:
    """The training kernel as float64 and whether it is traced (``(N, N)``) or full
    (``(N K, N K)``); checks shape (naming ``y_train`` when kernel and ``agent`` agree),
    symmetry and positive semi-definiteness (:func:`check_psd`)."""
    kernel = as_float_array("kernel_train", kernel_train, ndim=2)
    if kernel.shape == (n, n):
        traced = True
    elif kernel.shape == (n * k, n * k):
        traced = False
    else:
        rows = np.shape(agent)[0] if np.ndim(agent) == 1 else None
        if rows not in (None, n) and kernel.shape in ((rows, rows), (rows * k, rows * k)):
            # kernel_train and agent agree on N: the targets are the odd one out
            raise ValueError(
                f"y_train: expected {rows} rows (one target row per training sample, as "
                f"kernel_train {kernel.shape} and agent ({rows},) say), got {n} rows")
        raise ValueError(
            f"kernel_train: expected shape ({n}, {n}) (traced, Theta (x) I_K) or "
            f"({n * k}, {n * k}) (full, sample-major with K={k} outputs) for N={n} training "
            f"samples, got {kernel.shape}"
        )
    asym, scale = _asymmetry(kernel)
    if asym > 1e-8 * scale:
        raise ValueError(
            f"kernel_train: expected a symmetric matrix, max |K - K^T| = {asym:.3g} "
            f"(relative {asym / scale:.3g})"
        )
    given = getattr(kernel_train, "dtype", np.dtype(np.float64))
    low = np.issubdtype(given, np.floating) and np.finfo(given).eps > np.finfo(np.float64).eps
    check_psd(kernel, "kernel_train", 100 * float(np.finfo(given).eps) if low else PSD_RTOL)
    return kernel, traced


def _test_arrays(kernel_test_train, y_test, f0_test, n: int, k: int, rps: int,
                 order: np.ndarray | None):
    """Checked test arrays ``(kernel_test, y_test, f0_test, labels_test)`` (all ``None``
    without a test set); the kernel's columns follow the training rows' sort ``order``."""
    if kernel_test_train is None and y_test is None:
        if f0_test is not None:
            raise ValueError("f0_test: given without kernel_test_train and y_test")
        return None, None, None, None
    if kernel_test_train is None or y_test is None:
        raise ValueError(
            "kernel_test_train / y_test: give both (test kernel and test targets) or neither"
        )
    yt = as_float_array("y_test", y_test, ndim=2)
    m = yt.shape[0]
    check_shape("y_test", yt, (None, k), f"K={k} outputs like y_train")
    kt = as_float_array("kernel_test_train", kernel_test_train, ndim=2)
    if kt.shape[1] == n * rps and kt.shape[0] != m * rps:  # which of the two is wrong?
        raise ValueError(f"kernel_test_train / y_test: expected the same test samples, got "
                         f"{kt.shape[0]} rows of kernel_test_train"
                         + ("" if rps == 1 else f" ({rps} per test sample)")
                         + f" and {m} rows of y_test")
    check_shape("kernel_test_train", kt, (m * rps, n * rps),
                "rows: test samples (x outputs for a full kernel); columns: training")
    if order is not None:
        kt = kt[:, (order[:, None] * rps + np.arange(rps)[None, :]).ravel()]
    ft = np.zeros_like(yt) if f0_test is None else as_float_array("f0_test", f0_test, 2)
    check_shape("f0_test", ft, (m, k), "same as y_test")
    return kt, yt, ft, _labels(yt)
