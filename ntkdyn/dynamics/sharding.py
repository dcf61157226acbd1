"""Kernels and states spread over several devices with ``jax.sharding``.

Layout.  One 1-D :class:`jax.sharding.Mesh` with axis ``"cols"``.  Every kernel
is sharded along its **columns** — the contraction axis of every product the
solver forms (``Theta[S_q, :] @ alpha_q``); by symmetry of ``Theta`` this is the
row sharding of the transposed kernel.  The state ``alpha`` (``(A, R, C)``) is
sharded along the same axis ``R``, so:

* each device multiplies its column slab by its rows of the state and the
  partial products are summed across devices (an all-reduce of ``(n_q, C)``
  numbers per agent: tiny next to the kernel);
* mixing acts on the agent axis and needs no communication.

``R`` is padded to a multiple of the number of devices with zero kernel
columns and zero state rows, which no product can see; this is how an uneven
number of samples per device is handled.

:func:`sharded_columns` builds a matrix slab by slab straight into this layout
(``jax.make_array_from_callback``): each device's slab is computed by a
user function of (row indices, column indices), so the whole kernel never
exists on one device (nor in host memory, when the slabs come from a kernel
function).  :func:`per_device_bytes` is the estimate printed before anything is
allocated.

Multi-host: call ``jax.distributed.initialize()`` in every process (one per
host) before building the mesh; ``jax.devices()`` then lists all hosts'
devices and the same code runs unchanged (each process computes only the
slabs of its addressable devices).  Tested as 2 processes x 2 CPU devices over the
loopback address (gloo CPU collectives): ``tests/test_sharding_multiprocess.py``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from ntkdyn._utils.memory import GB, available_memory_bytes, format_bytes

AXIS = "cols"


def make_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A 1-D mesh over ``devices`` (default: all of ``jax.devices()``)."""
    devs = list(jax.devices() if devices is None else devices)
    if not devs:
        raise ValueError("devices: expected at least one device")
    return Mesh(np.array(devs), (AXIS,))


def padded(n: int, mesh: Mesh) -> int:
    """``n`` rounded up to a multiple of the mesh size."""
    d = mesh.devices.size
    return int(math.ceil(n / d) * d)


def column_sharding(mesh: Mesh, ndim: int) -> NamedSharding:
    """Shard the last axis but one for states ``(A, R, C)``; the last for kernels."""
    spec = [None] * ndim
    spec[-1] = AXIS
    return NamedSharding(mesh, P(*spec))


def state_sharding(mesh: Mesh) -> NamedSharding:
    """``(A, R, C)`` states: sharded along ``R``."""
    return NamedSharding(mesh, P(None, AXIS, None))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def sharded_columns(
    n_rows: int,
    n_cols: int,
    entries: Callable[[np.ndarray, np.ndarray], np.ndarray],
    mesh: Mesh,
    *,
    dtype=np.float64,
    lead: tuple[int, ...] = (),
) -> jax.Array:
    """An ``lead + (n_rows, padded(n_cols))`` array sharded along its last axis.

    ``entries(rows, cols)`` returns the ``(len(rows), len(cols))`` block (or
    ``lead + (...)`` when ``rows`` has the leading shape); it is called once per
    addressable device with that device's column range, so peak memory per
    device is one slab plus whatever ``entries`` needs.  Padding columns are 0.
    """
    cols_p = padded(n_cols, mesh)
    shape = (*lead, n_rows, cols_p)

    def slab(index):
        cs = index[-1]
        c0, c1 = cs.start or 0, cs.stop if cs.stop is not None else cols_p
        out = np.zeros((*lead, n_rows, c1 - c0), dtype=dtype)
        hi = min(c1, n_cols)
        if hi > c0:
            out[..., : hi - c0] = entries(np.arange(n_rows), np.arange(c0, hi))
        return out

    return jax.make_array_from_callback(shape, column_sharding(mesh, len(shape)), slab)


def analytic_kernel_sharded(arch, x_rows: np.ndarray, x_cols: np.ndarray, mesh: Mesh, *,
                            dtype=np.float64) -> jax.Array:
    """Analytic NTK ``(len(x_rows), padded(len(x_cols)))`` built slab by slab, column-sharded.

    Diagonal entries (the same sample in rows and columns) are taken from the
    symmetric computation, so the result equals ``arch.kernel(x_rows, x_cols)`` of a
    one-shot call to round-off.
    """
    same = x_rows is x_cols

    def entries(r, c):
        blk = arch.kernel(x_rows[r], x_cols[c])
        if same:
            common, ir, ic = np.intersect1d(r, c, return_indices=True)
            if common.size:
                blk[ir, ic] = np.diag(arch.kernel(x_rows[common]))
        return blk

    return sharded_columns(len(x_rows), len(x_cols), entries, mesh, dtype=dtype)


def per_device_bytes(
    n_train: int,
    n_test: int,
    outputs: int,
    agents: int,
    n_devices: int,
    *,
    traced: bool = True,
    rates: int = 1,
    kernel_dtype=np.float64,
) -> dict[str, int]:
    """Estimated bytes per device of a sharded prediction.

    Kernel slabs ``R x R/D`` and ``R_test x R/D`` (``kernel_dtype``), the state
    and ~6 temporaries ``7 (Q+1) (R/D) C`` in float64, and the replicated
    residual, targets and per-record products ``(Q+1) C (R + R_test)``.
    """
    rows = n_train * (1 if traced else outputs)
    rows_t = n_test * (1 if traced else outputs)
    cols_d = math.ceil(rows / n_devices)
    c = rates * (outputs if traced else 1)
    item = np.dtype(kernel_dtype).itemsize
    kernel = (rows + rows_t) * cols_d * item
    state = 7 * (agents + 1) * cols_d * c * 8
    replicated_ = (2 * rows + rows_t) * c * 8 + (agents + 1) * c * (rows + rows_t) * 8
    return {"kernel": kernel, "state": state, "replicated": replicated_,
            "total": kernel + state + replicated_}


def describe_estimate(est: dict[str, int], n_devices: int) -> str:
    return (f"per device ({n_devices} devices): kernel slabs {format_bytes(est['kernel'])}, "
            f"state {format_bytes(est['state'])}, replicated {format_bytes(est['replicated'])}"
            f"; total {format_bytes(est['total'])}")


def device_memory_bytes(device: jax.Device) -> int:
    """Memory of one device (``bytes_limit`` where the backend reports it)."""
    try:
        stats = device.memory_stats()
    except Exception:  # noqa: BLE001 - backends without memory stats
        stats = None
    if stats and "bytes_limit" in stats:
        return int(stats["bytes_limit"])
    return available_memory_bytes() // max(1, len(jax.local_devices()))


def fits_hint(est: dict[str, int], n_devices: int, device_bytes: int) -> str:
    """What would fit: more devices, a float32 kernel, fewer samples."""
    need = est["total"]
    more = math.ceil(n_devices * est["kernel"] / max(device_bytes - est["replicated"]
                                                     - est["state"], 1))
    return (f"needs {format_bytes(need)} per device, {format_bytes(device_bytes)} available; "
            f"would fit with about {max(more, n_devices + 1)} devices, or with "
            f"kernel_dtype='float32' (kernel slabs {format_bytes(est['kernel'] / 2)}), or "
            f"with about {math.floor(math.sqrt(device_bytes / max(need, 1)) * 100)}% of the "
            f"training samples")


__all__ = ["AXIS", "GB", "analytic_kernel_sharded", "describe_estimate", "device_memory_bytes",
           "fits_hint", "make_mesh", "padded", "per_device_bytes", "replicated",
           "sharded_columns", "state_sharding"]
