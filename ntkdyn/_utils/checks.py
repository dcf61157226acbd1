"""Input checks shared by the public entry points.

Convention (as in scipy/numpy): a bad argument raises ``ValueError`` whose
message starts with the argument's name and says what was expected and what
was found (a ``TypeError``, in the same form, for an object of another kind
altogether: :func:`check_instance`).  Checks run at the boundary (config, graph,
data, kernels); the numerical core trusts its inputs.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence

import numpy as np


def is_real(value) -> bool:
    """Whether ``value`` is a real number (Python or numpy, booleans excluded)."""
    return isinstance(value, int | float | np.integer | np.floating) and \
        not isinstance(value, bool)


def as_array(name: str, value) -> np.ndarray:
    """``np.asarray(value)``, with a ``ValueError`` naming ``name`` for a ragged nested list
    (numpy's own says only "inhomogeneous shape")."""
    try:
        return np.asarray(value)
    except ValueError as exc:
        raise ValueError(f"{name}: expected a numeric array, got a ragged "
                         f"{type(value).__name__} (rows of different lengths)") from exc


def as_float_array(name: str, value, ndim: int | Sequence[int] | None = None) -> np.ndarray:
    """Convert ``value`` to a float64 ndarray, checking dimensionality and finiteness
    (complex input is refused, not cast to its real part)."""
    raw = as_array(name, value)
    if np.iscomplexobj(raw):
        raise ValueError(f"{name}: expected real values, got complex (dtype {raw.dtype})")
    try:
        arr = np.asarray(raw, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name}: expected a numeric array, got {type(value).__name__}") from exc
    if ndim is not None:
        allowed = (ndim,) if isinstance(ndim, int) else tuple(ndim)
        if arr.ndim not in allowed:
            want = " or ".join(f"{d}-D" for d in allowed)
            hint = (f" (one column: {name}[:, None])" if arr.ndim == 1 and allowed == (2,)
                    else "")
            raise ValueError(f"{name}: expected a {want} array, got shape {arr.shape}{hint}")
    check_finite(name, arr)
    return arr


def check_finite(name: str, arr: np.ndarray) -> None:
    """Raise ``ValueError`` naming ``name`` and the first non-finite entry."""
    bad = ~np.isfinite(arr)
    if bad.any():
        idx = tuple(int(i) for i in np.argwhere(bad)[0])
        raise ValueError(
            f"{name}: expected finite values, found {arr[idx]} at index {idx} "
            f"({int(bad.sum())} non-finite entries in all)"
        )


def check_shape(name: str, arr: np.ndarray, expected: tuple, hint: str = "") -> None:
    """Raise unless ``arr.shape == expected`` (``None`` in ``expected`` matches anything)."""
    ok = len(arr.shape) == len(expected) and all(
        e is None or e == s for e, s in zip(expected, arr.shape, strict=True)
    )
    if not ok:
        items = ["?" if e is None else str(e) for e in expected]
        shown = f"({items[0]},)" if len(items) == 1 else "(" + ", ".join(items) + ")"
        extra = f" ({hint})" if hint else ""
        raise ValueError(f"{name}: expected shape {shown}{extra}, got {arr.shape}")


def learning_rates(lr, num_agents: int, name: str = "lr", *, rows: bool = False) -> np.ndarray:
    """Return per-agent learning rates as a ``(Q,)`` float64 array.

    ``lr`` is a positive number (the same rate for every agent) or a ``(Q,)``
    array of positive numbers.  With ``rows=True``, ``lr`` is a non-empty
    sequence of such rates (a sweep, named ``lrs``) and the result is ``(R, Q)``.
    """
    if rows:
        name = "lrs" if name == "lr" else name
        if isinstance(lr, str | bytes) or not hasattr(lr, "__len__"):
            raise ValueError(f"{name}: expected a non-empty sequence of learning rates, got "
                             f"{type(lr).__name__} {lr!r}")
        if len(lr) == 0:
            raise ValueError(f"{name}: expected a non-empty sequence of learning rates, got "
                             "an empty one")
        # one rate is what predict / predict_from_kernels pass on: it is the user's `lr`
        names = ["lr"] if len(lr) == 1 else [f"{name}[{i}]" for i in range(len(lr))]
        return np.stack([learning_rates(r, num_agents, n) for r, n in zip(lr, names, strict=True)])
    wanted = f"a positive number or an array of {num_agents} per-agent rates"
    if lr is None or isinstance(lr, str | bytes):
        raise ValueError(f"{name}: expected {wanted}, got {type(lr).__name__} {lr!r}")
    if _holds_bool(lr):  # bool is an int and numpy bools convert: True would be 1.0
        raise ValueError(f"{name}: expected {wanted}, got a boolean ({_short(lr)}); "
                         "True / False are not learning rates")
    try:
        arr = np.asarray(lr, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name}: expected {wanted}, got {type(lr).__name__} "
                         f"{_short(lr)} ({exc})") from None
    scalar = arr.ndim == 0
    if scalar:
        arr = np.full(num_agents, float(arr))
    if arr.ndim != 1 or arr.shape[0] != num_agents:
        raise ValueError(f"{name}: expected {wanted}, got shape {np.shape(lr)}")
    check_finite(name, arr)
    if np.any(arr <= 0):
        q = int(np.argmax(arr <= 0))
        raise ValueError(f"{name}: learning rates must be > 0, got {float(arr[q])!r}"
                         + ("" if scalar else f" (agent {q})"))
    return arr


def _holds_bool(value) -> bool:
    """Whether ``value`` is a boolean or holds one (a bool array, a list with a bool)."""
    if isinstance(value, bool | np.bool_):
        return True
    if isinstance(value, list | tuple):
        return any(_holds_bool(v) for v in value)
    dtype = getattr(value, "dtype", None)  # numpy and jax arrays
    if dtype == np.dtype(object):
        return any(_holds_bool(v) for v in np.asarray(value).ravel())
    return dtype == np.dtype(bool)


def agent_indices(agent: np.ndarray, num_agents: int) -> tuple[np.ndarray, np.ndarray]:
    """``(agent as int64, samples per agent)`` for indices into ``num_agents`` agents;
    ``ValueError`` naming ``agent`` for non-integer or out-of-range indices or an agent
    without samples."""
    agent = _integer_indices(np.asarray(agent), num_agents)
    if agent.min() < 0 or agent.max() >= num_agents:
        raise ValueError(f"agent: expected indices in [0, {num_agents}) for a {num_agents}x"
                         f"{num_agents} mixing matrix, found {int(agent.min())}.."
                         f"{int(agent.max())}")
    counts = np.bincount(agent, minlength=num_agents)
    if np.any(counts == 0):
        top = int(agent.max())
        hint = "" if top == num_agents - 1 else (
            f": the {num_agents}x{num_agents} mixing matrix has {num_agents} agents but the "
            f"agent indices cover 0..{top} only (a mixing matrix for {top + 1} agents, or "
            "samples for every agent)")
        raise ValueError(f"agent: agent {int(np.argmin(counts))} has an empty shard (no "
                         f"training samples){hint}")
    return agent, counts


def _integer_indices(agent: np.ndarray, num_agents: int) -> np.ndarray:
    """``agent`` as int64 if every entry is an integer (an integer dtype, integral floats, or
    Python / numpy integers in an object array); booleans, strings, ``None``, complex and
    fractional values are a ``ValueError`` naming ``agent`` and the first offending entry."""
    wanted = f"agent: expected integer agent indices in [0, {num_agents})"
    kind = agent.dtype.kind
    if kind in "iu":
        return agent.astype(np.int64)
    flat = agent.ravel()
    if kind == "f":
        with np.errstate(invalid="ignore"):  # inf % 1 is nan: refused below
            bad = ~(np.mod(flat, 1) == 0)
    elif kind == "O":
        bad = np.array([isinstance(v, bool) or not isinstance(v, numbers.Integral)
                        for v in flat], dtype=bool)
    else:  # booleans, strings, bytes, complex, dates: not agent indices, whatever the value
        what = {"b": "booleans", "U": "strings", "S": "bytes", "c": "complex numbers"}
        first = f", first {flat[0].item()!r}" if flat.size else ""
        raise ValueError(f"{wanted}, got {what.get(kind, 'values')} (dtype {agent.dtype}"
                         f"{first})")
    if bad.any():
        i = int(np.argmax(bad))
        v = flat[i].item() if isinstance(flat[i], np.generic) else flat[i]
        raise ValueError(f"{wanted}, got {type(v).__name__} {v!r} at index {i}")
    return agent.astype(np.int64)


def _short(value, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


#: Largest step the step-by-step recursions accept: at a microsecond a step (a tiny
#: problem) 10^9 steps already take a quarter of an hour, real problems hours to days; the
#: long-time limit is :func:`ntkdyn.fixed_point` (or the gradient flow, which has no limit).
MAX_STEP = 10**9
#: Most recorded steps (or times) of one prediction: beyond any plot, and each costs a
#: record per agent, rate and metric (:func:`ntkdyn._utils.memory.prediction_bytes`).
MAX_RECORDS = 10**7


def _too_many_records(name: str, count: int) -> ValueError:
    return ValueError(f"{name}: expected at most {MAX_RECORDS:,} recorded steps, got "
                      f"{count:,} (record every k-th step: range(0, T + 1, k))")


def _beyond_max_step(name: str, step: int):
    raise ValueError(f"{name}: expected steps at most {MAX_STEP:,}, got {step:,} (the "
                     "recursion runs step by step; for the long-time limit use "
                     "nd.fixed_point or the gradient flow, continuous=True)")


def steps_array(steps, name: str = "steps", integer: bool = True) -> np.ndarray:
    """Validate recorded steps (or times): non-empty, non-negative, non-decreasing (a
    repeated step is recorded again, tested), at most :data:`MAX_RECORDS` of them and,
    for steps (``integer``), none beyond :data:`MAX_STEP`.  An integer ``T`` means
    ``0, 1, ..., T``; both limits are checked before anything is materialised."""
    if isinstance(steps, int | np.integer) and not isinstance(steps, bool):
        if steps < 0:
            raise ValueError(f"{name}: expected a horizon >= 0 (an integer T records steps "
                             f"0..T) or a sequence of steps, got {int(steps)}")
        steps = range(0, int(steps) + 1)
    if isinstance(steps, range):
        if integer and len(steps) and max(steps[0], steps[-1]) > MAX_STEP:
            _beyond_max_step(name, max(steps[0], steps[-1]))
        if len(steps) > MAX_RECORDS:
            raise _too_many_records(name, len(steps))
    arr = np.asarray(list(steps) if isinstance(steps, range) else steps)
    if arr.size > MAX_RECORDS:
        raise _too_many_records(name, arr.size)
    if arr.ndim != 1 or arr.size == 0:
        raise ValueError(f"{name}: expected a non-empty 1-D sequence, got shape {arr.shape}")
    if integer:
        if not np.issubdtype(arr.dtype, np.integer):
            if not np.all(np.equal(np.mod(arr, 1), 0)):
                raise ValueError(f"{name}: expected integer step numbers, got {arr[:5]}...")
            arr = arr.astype(np.int64)
    else:
        arr = arr.astype(np.float64)
        check_finite(name, arr)
    if np.any(arr < 0):
        raise ValueError(f"{name}: expected values >= 0, got {arr.min()}")
    if integer and arr.max() > MAX_STEP:
        _beyond_max_step(name, int(arr.max()))
    if np.any(np.diff(arr) < 0):
        i = int(np.argmax(np.diff(arr) < 0))
        raise ValueError(f"{name}: expected a non-decreasing sequence, got {arr[i]} then "
                         f"{arr[i + 1]} (positions {i}, {i + 1})")
    return arr


def check_f0_pair(f0_train, f0_test) -> None:
    """``ValueError`` naming the missing one where exactly one of ``f0_train`` / ``f0_test``
    is given with a test set: the other would be taken as 0 (the mean network's), so the
    training and test metrics would describe two different networks."""
    if (f0_train is None) == (f0_test is None):
        return
    given, missing = ("f0_train", "f0_test") if f0_test is None else ("f0_test", "f0_train")
    raise ValueError(
        f"{missing}: expected the same network's outputs as {given}, got None: {given} "
        f"without {missing} would take {missing} = 0 (the mean network's), so the training "
        "and test metrics would describe two different networks; give both (a given "
        "network) or neither (the mean network, f0 = 0)")


def check_nonnegative_int(name: str, value) -> int:
    """``value`` as an ``int >= 0`` (numpy integers accepted, booleans refused), else a
    ``ValueError`` naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 0:
        raise ValueError(f"{name}: expected an integer >= 0, got {value!r}")
    return int(value)


def check_bool(name: str, value) -> bool:
    """``value`` as a ``bool`` (Python or numpy booleans only), else a ``ValueError``
    naming ``name`` (``continuous="yes"`` ran as if it were False)."""
    if not isinstance(value, bool | np.bool_):
        raise ValueError(f"{name}: expected True or False, got {value!r}")
    return bool(value)


def check_positive_float(name: str, value) -> float:
    """``value`` as a finite ``float > 0`` (anything ``float()`` accepts, booleans refused),
    else a ``ValueError`` naming ``name``."""
    try:
        f = float(value)
    except (TypeError, ValueError):
        f = float("nan")
    if isinstance(value, bool) or not np.isfinite(f) or f <= 0:
        raise ValueError(f"{name}: expected a finite number > 0, got {value!r}")
    return f


def check_instance(name: str, value, cls: type, expected: str):
    """``value`` if it is a ``cls``, else a ``TypeError`` naming ``name`` and saying what was
    expected (``expected``, e.g. "a KernelProblem (from nd.make_problem ...)") and found."""
    if not isinstance(value, cls):
        raise TypeError(f"{name}: expected {expected}, got {type(value).__name__} "
                        f"{_short(value)}")
    return value
