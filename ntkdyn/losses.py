r"""The trained losses, shared by kernel-space prediction and real-network training.

* ``"mse"``: agent ``q`` minimises ``L_q = 1/(2 N_q) sum_{i in q} ||f(x_i) - y_i||^2``;
  the output-space gradient is ``(f - y) / N_q``.
* ``"cross_entropy"``: ``L_q = (1/N_q) sum_{i in q} CE(softmax(s f(x_i)), y_i)`` with
  logit scale (inverse temperature) ``s``; the output-space gradient is
  ``s (softmax(s f) - y) / N_q`` (``theory/cross_entropy.md``).

Names are checked here once, at the boundary; inside, the loss is one of :data:`LOSSES`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from ntkdyn._utils.checks import as_array, as_float_array, check_positive_float

#: the losses of the kernel-space prediction (``theory/cross_entropy.md``)
LOSSES = ("mse", "cross_entropy")


def check_loss(loss) -> str:
    """``loss`` if it is one of :data:`LOSSES`, else ``ValueError`` naming ``loss``."""
    if not isinstance(loss, str) or loss not in LOSSES:
        raise ValueError(f"loss: expected one of {LOSSES}, got {loss!r}")
    return loss


def check_logit_scale(logit_scale, loss: str | None = None) -> float:
    """A finite ``logit_scale > 0``, else ``ValueError`` naming it; given ``loss``, a scale
    other than 1 with the squared loss (which has no logits) is refused too, as the TOML
    refuses ``training.logit_scale`` there (it was ignored)."""
    scale = check_positive_float("logit_scale", logit_scale)
    if loss is not None and loss != "cross_entropy" and scale != 1.0:
        raise ValueError(f"logit_scale: only for loss='cross_entropy' (the logits s f), got "
                         f"logit_scale={logit_scale!r} with loss={loss!r}")
    return scale


def class_targets(name: str, y, k: int | None = None) -> np.ndarray:
    """Cross-entropy targets as one-hot ``(N, K)`` float64 rows.

    ``y`` is either one-hot ``(N, K)`` (every row has one entry 1 and the rest 0) or
    integer labels ``(N,)`` in ``[0, K)`` (``K`` given, else ``max + 1``).  Anything else
    (soft or regression targets) is a ``ValueError`` naming ``name``.
    """
    arr = as_array(name, y)
    if arr.ndim == 1:
        if arr.size == 0 or not np.issubdtype(arr.dtype, np.number) or \
                not np.all(np.isfinite(arr)) or not np.all(np.mod(arr, 1) == 0) or arr.min() < 0:
            raise ValueError(f"{name}: loss='cross_entropy' expects one-hot rows (N, K) or "
                             "integer class labels (N,) >= 0")
        labels = arr.astype(np.int64)
        k = int(labels.max()) + 1 if k is None else int(k)
        if labels.max() >= k:
            raise ValueError(f"{name}: labels must lie in [0, {k}) for K={k} outputs, found "
                             f"{int(labels.max())}")
        return np.eye(k)[labels]
    arr = as_float_array(name, arr, ndim=2)
    ok = np.all((arr == 0) | (arr == 1)) and np.all(arr.sum(axis=1) == 1)
    if not ok:
        raise ValueError(f"{name}: loss='cross_entropy' expects one-hot rows (each row one 1 "
                         "and the rest 0) or integer class labels (N,); got targets that are "
                         "neither (soft or regression targets)")
    return arr


def sample_loss(f, y, loss: str = "mse", logit_scale: float = 1.0):
    r"""Per-sample loss over the last (output) axis, for predictions and real training alike.

    ``"mse"``: ``||f - y||^2 / 2``; ``"cross_entropy"``: ``logsumexp(s f) - s y^T f`` for
    one-hot ``y`` (``= -log softmax(s f)_c``), ``s = logit_scale``.
    """
    if loss == "cross_entropy":
        z = logit_scale * f
        return jax.nn.logsumexp(z, axis=-1) - jnp.sum(y * z, axis=-1)
    return 0.5 * jnp.sum((f - y) ** 2, axis=-1)


def accuracy(f, labels):
    """Fraction of samples whose largest output is the label (mean over the sample axis,
    the second to last of ``f``)."""
    return jnp.mean((jnp.argmax(f, axis=-1) == labels).astype(f.dtype), axis=-1)
