"""Memory estimates, made before anything large is allocated.

A prediction holds the training kernel (``R x R`` float64, ``R = N`` for a
traced kernel and ``N K`` for a full one), the test-train kernel, their device
copies, and the state ``(Q + 1) x R x C`` (agents plus the centralised
reference, ``C`` columns: outputs times learning rates); building the kernels
needs more than the result (:func:`analytic_build_bytes`,
:func:`empirical_build_bytes`).  :func:`prediction_bytes` is the peak over
these phases of the growth of the resident set above its value when the
estimate is made (the interpreter, jax and the data are not counted: they are
resident already, and ``MemAvailable`` excludes them); ``tests/test_memory.py``
checks it against ``VmHWM`` of fresh processes.  :func:`ensure_fits` compares an
estimate with the memory available and raises :class:`ProblemTooLargeError`.
"""

from __future__ import annotations

import os

GB = 1024.0**3


class ProblemTooLargeError(MemoryError):
    """The problem would not fit in memory (raised before allocating)."""


def available_memory_bytes() -> int:
    """Bytes of memory usable by this process.

    ``NTKDYN_MEMORY_LIMIT`` (bytes, or with a suffix: ``"8GB"``, ``"512MB"``)
    overrides the detected value; otherwise ``MemAvailable`` from
    ``/proc/meminfo`` or, failing that, the physical memory.
    """
    env = os.environ.get("NTKDYN_MEMORY_LIMIT")
    if env:
        return parse_bytes(env)
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):  # pragma: no cover - exotic platforms
        return int(8 * GB)


def parse_bytes(text: str | int | float) -> int:
    """Parse ``"8GB"``, ``"512 MB"``, ``"1.5e9"`` or a number into bytes."""
    if isinstance(text, int | float):
        return int(text)
    s = text.strip().upper().replace(" ", "")
    for suffix, factor in (("GB", GB), ("G", GB), ("MB", 1024**2), ("M", 1024**2),
                           ("KB", 1024), ("K", 1024), ("B", 1)):
        if s.endswith(suffix):
            return int(float(s[: -len(suffix)]) * factor)
    return int(float(s))


def format_bytes(n: float) -> str:
    """Human-readable size (binary units)."""
    for unit, factor in (("GB", GB), ("MB", 1024**2), ("KB", 1024)):
        if n >= factor:
            return f"{n / factor:.2f} {unit}"
    return f"{int(n)} B"


#: Resident growth of the XLA runtime and the compiled programs of one prediction
#: (backend start, LLVM, executables, allocator slack): measured 130-300 MB on CPU with
#: jax 0.10 at N = 2,000-6,000 (tests/test_memory.py), independent of N.
RUNTIME_BYTES = 170 * 2**20
#: Recorded metrics per slot and learning rate and record (losses, accuracies, distances:
#: 13 in ``ntkdyn.dynamics.solver._metrics``, rounded up).
RECORD_ARRAYS = 16
#: Rows up to which the centralised reference runs in its eigenbasis (one dense ``eigh``).
REFERENCE_EIGH_MAX = 8192
#: Peak of that ``eigh`` in units of ``8 R^2`` beyond the host kernels, and its fixed
#: overhead (LAPACK and scipy buffers), both measured (``tests/test_memory.py``).
EIGH_FACTOR = 4.5
EIGH_OVERHEAD_BYTES = 150 * 10**6
#: Rows of the analytic kernel per block (``kernels.analytic._BLOCK_ELEMENTS``) times the
#: ~6 block-sized temporaries of one layer's dual.
ANALYTIC_BLOCK_BYTES = 6 * 2**20 * 8
#: Row blocks of ``make_problem``'s symmetry check (1024 rows, ~3 temporaries).
ASYMMETRY_ROWS = 3 * 1024


def empirical_build_bytes(n1: int, n2: int, outputs: int, traced: bool, per_sample: int,
                          batch: int) -> int:
    """Peak bytes of one empirical kernel ``(N1 r, N2 r)`` (``r = 1`` traced, ``K`` full).

    The result ``8 N1 N2 r^2``, the two feature (or Jacobian) batches alive in
    ``_assemble`` plus one copy XLA makes of one of them while contracting
    (``3 B per_sample``), and the block products: the contraction's output, its
    per-layer Gram matrices that XLA keeps alive, and the symmetrised copy
    (``4 (B r)^2`` float64; measured 3.5-4.8).
    """
    r = 1 if traced else int(outputs)
    return int(8 * n1 * n2 * r * r + 3 * batch * per_sample + 4 * 8 * (batch * r) ** 2)


def analytic_build_bytes(n1: int, n2: int, symmetric: bool) -> int:
    """Peak bytes of :func:`ntkdyn.kernels.analytic_kernels` for ``(N1, N2)``.

    NNGP and NTK ``2 N1 N2`` float64, one temporary of the same size while a symmetric
    pair is symmetrised (``(K + K^T) / 2``, numpy reuses the sum for the division),
    and the per-block temporaries of the duals.
    """
    return int(8 * (3 if symmetric else 2) * n1 * n2 + ANALYTIC_BLOCK_BYTES)


def prediction_bytes(
    n_train: int,
    n_test: int,
    outputs: int,
    agents: int,
    *,
    traced: bool = True,
    rates: int = 1,
    records: int = 100,
    record_outputs: bool = False,
    itemsize: int = 8,
    build: tuple[int, int] | None = None,
    reorder: bool = False,
    runtime: bool = True,
    eigen_reference: bool = False,
    solve_extra: int = 0,
    carried_outputs: bool = False,
) -> int:
    """Estimated peak growth of resident memory of one kernel-space prediction.

    What is estimated is the increase of the process's resident set (``VmRSS``) over its
    value when the estimate is made (interpreter, jax, the data: already resident and
    therefore not in ``MemAvailable``), i.e. the peak ``VmHWM`` minus the ``VmRSS`` at
    the start, which is what :func:`ensure_fits` compares with the memory available.
    With ``R = N`` rows (traced) or ``N K`` (full), ``R_t`` likewise for the test set,
    ``A = Q + 1`` slots and ``C`` state columns, the phases are

    * building the kernels: ``build = (train, test)`` peak bytes of each (from
      :func:`analytic_build_bytes` / :func:`empirical_build_bytes`; the training kernel
      ``8 R^2`` stays alive while the test kernel is built); ``None``: kernels given;
    * ``make_problem``: the kernels, its symmetry check's row blocks, and with
      ``reorder`` (samples not sorted by agent) a sorted copy of both kernels;
    * solving: the host kernels ``8 (R^2 + R_t R)``, their device copies
      ``itemsize (R^2 + R_t R)`` (jax copies numpy arrays, also on CPU), the state and
      ~6 temporaries ``7 A R C``, the per-record products ``2 A C (R + R_t)``, and the
      records (:data:`RECORD_ARRAYS` per slot and rate, on the device and on the host:
      ``16 RECORD_ARRAYS T A n_rates``), the recorded outputs if asked; the stability
      analysis that may follow holds the same device copy (the solver's is freed by then)
      and state-sized vectors;
    * with ``eigen_reference`` (the centralised reference in its eigenbasis,
      :func:`ntkdyn.dynamics.solver.reference_basis`, used up to ``REFERENCE_EIGH_MAX`` rows): the
      ``eigh`` of the scaled ``R x R`` kernel holds the host kernels plus about
      ``4.5 x 8 R^2`` (the scaled copy, LAPACK's Fortran-order copy and ``2 R^2``
      workspace of the divide-and-conquer driver, the eigenvectors) and
      :data:`EIGH_OVERHEAD_BYTES`; its ``R x R`` basis stays cached while the solver runs
      (fitted to the measured peak at N = 2,000 and 4,000, ``tests/test_memory.py``);
    * ``solve_extra``: bytes the caller knows are alive during the solve only (the sampled
      networks' record arrays of one random network), added to the solving phase;
    * ``carried_outputs``: the state also carries the agents' training and test outputs
      (:func:`ntkdyn.dynamics.solver.carries_outputs`): state and temporaries
      ``7 A (2 R + R_t) C`` instead of ``7 A R C``, and the agents' blocks of the
      transposed test kernel, ``itemsize R_t R``;

    the peak over the phases plus :data:`RUNTIME_BYTES` (``runtime=False`` leaves it out).
    """
    rows = n_train * (1 if traced else outputs)
    rows_test = n_test * (1 if traced else outputs)
    cols = rates * (outputs if traced else 1)
    host = 8 * (rows * rows + rows_test * rows)
    phases = []
    if build is not None:
        train_b, test_b = build
        phases += [train_b, 8 * rows * rows + test_b]
    problem = host + 8 * ASYMMETRY_ROWS * rows
    if reorder:
        problem += host
    phases.append(problem)
    solve = host + itemsize * (rows * rows + rows_test * rows)
    solve += 8 * 7 * (agents + 1) * rows * cols
    if carried_outputs:
        solve += 8 * 7 * (agents + 1) * (rows + rows_test) * cols + itemsize * rows_test * rows
    solve += 8 * 2 * (agents + 1) * cols * (rows + rows_test)
    solve += 2 * 8 * RECORD_ARRAYS * records * (agents + 1) * rates
    if record_outputs:
        solve += 8 * records * (agents + 1) * rates * (n_train + n_test) * outputs
    if eigen_reference:
        phases.append(host + EIGH_FACTOR * 8 * rows * rows + EIGH_OVERHEAD_BYTES)
        solve += 8 * rows * rows
    phases.append(solve + int(solve_extra))
    return int(max(phases) + (RUNTIME_BYTES if runtime else 0))


def largest_fitting(estimate, limit: int, hi: int) -> int:
    """Largest ``n`` in ``[0, hi]`` with ``estimate(n) <= limit`` (``estimate`` increasing)."""
    if estimate(1) > limit:
        return 0
    lo, hi = 1, int(hi)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if estimate(mid) <= limit:
            lo = mid
        else:
            hi = mid - 1
    return lo


def ensure_fits(needed: int, what: str, suggestions: str = "", limit: int | None = None) -> None:
    """Raise :class:`ProblemTooLargeError` if ``needed`` bytes exceed the memory available."""
    avail = available_memory_bytes() if limit is None else int(limit)
    if needed > avail:
        msg = (
            f"{what} needs about {format_bytes(needed)} but only {format_bytes(avail)} is "
            "available (set NTKDYN_MEMORY_LIMIT to override the detected value)"
        )
        if suggestions:
            msg += f"; {suggestions}"
        raise ProblemTooLargeError(msg)
