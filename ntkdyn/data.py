"""Data sets and their partition across agents.

Conventions shared by every loader
----------------------------------
- Layout is sample-major, outputs last: inputs ``x`` are ``(N, d)`` float64, targets ``y``
  are ``(N, K)`` float64, class indices ``labels`` are ``(N,)`` int64 in ``0..K-1``, and
  ``classes[k]`` is the original label of index ``k`` (in the order the caller gave).
- Targets are one-hot, ``y[i] = e_{labels[i]}``; ``centre_targets=True`` subtracts ``1/K``
  from every entry, so every target row sums to 0 (the arg-max is unchanged).
- Pixels are scaled to ``[0, 1]`` first (``/255``; ``/16`` for the 4-bit digits).
  ``standardise=True`` then applies a per-feature z-score with the mean and standard
  deviation of the *training* split to both splits; features constant on the training
  split (std 0, up to round-off) are set to 0 in both splits rather than NaN.
- Every random choice takes an explicit ``seed`` (``numpy.random.default_rng``): the same
  arguments give the same arrays bit for bit. Nothing is ever downloaded.

Partitions
----------
A :class:`Partition` keeps the caller's sample order: ``parts.dataset`` is the data set
passed in and ``parts.agent[i]`` is the agent of ``parts.dataset.x_train[i]``, so a kernel
computed on ``data.x_train`` lines up with ``parts.agent``. The agent-sorted layout in
which a solver step is one batched matmul (agent ``q`` holds the block
``offsets[q]:offsets[q+1]`` of ``order``; within an agent, data-set order) is
:meth:`Partition.sorted`, used internally. Schemes are described in :func:`partition`.
"""

from __future__ import annotations

import dataclasses
import functools
import gzip
import math
import pickle
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ntkdyn._utils.checks import check_nonnegative_int, is_real

SCHEMES = ("iid", "shards", "dirichlet", "given")
_MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
                "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
_CIFAR_FILES = tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch",)
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def _check_finite(field: str, a: np.ndarray) -> None:
    bad = ~np.isfinite(a)
    if bad.any():
        index = tuple(int(i) for i in np.argwhere(bad)[0])
        raise ValueError(f"{field} has a non-finite value ({a[index]}) at index {index}")


def _as_labels(field: str, a: np.ndarray) -> np.ndarray:
    a = np.asarray(a)
    if a.size and not np.issubdtype(a.dtype, np.integer):
        if not (np.issubdtype(a.dtype, np.floating) and np.all(a == np.round(a))):
            raise ValueError(f"{field} must hold integers, got dtype {a.dtype}")
    return a.astype(np.int64, copy=False)


@dataclass(frozen=True, eq=False)
class Dataset:
    """A classification data set, train and test splits, in ntkdyn's layout.

    ``x_train`` ``(N, d)``, ``y_train`` ``(N, K)``, ``x_test`` ``(M, d)``, ``y_test``
    ``(M, K)`` are float64 (targets one-hot, optionally centred); ``labels_train`` ``(N,)``
    and ``labels_test`` ``(M,)`` are int64 class indices in ``0..K-1``; column ``k`` of
    ``y`` is original label ``classes[k]``. Validated on construction (shapes, finite
    values, ``N >= 1``); arrays are coerced to float64 / int64.
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    labels_train: np.ndarray
    labels_test: np.ndarray
    name: str
    classes: tuple[int, ...]

    def __post_init__(self) -> None:
        for field in ("x_train", "y_train", "x_test", "y_test"):
            a = np.asarray(getattr(self, field), dtype=np.float64)
            if field != "y_test" and a.ndim != 2:
                raise ValueError(f"{field} must be 2-D, got shape {a.shape}")
            object.__setattr__(self, field, a)
        for field in ("labels_train", "labels_test"):
            object.__setattr__(self, field, _as_labels(field, getattr(self, field)))
        object.__setattr__(self, "classes", tuple(int(c) for c in self.classes))
        (n, d), k, m = self.x_train.shape, self.y_train.shape[1], self.x_test.shape[0]
        expected = {"y_train": ((n, k), "(N, K)"), "x_test": ((m, d), "(M, d)"),
                    "y_test": ((m, k), "(M, K)"), "labels_train": ((n,), "(N,)"),
                    "labels_test": ((m,), "(M,)")}
        for field, (shape, symbol) in expected.items():
            if getattr(self, field).shape != shape:
                raise ValueError(f"{field} has shape {getattr(self, field).shape}, expected "
                                 f"{symbol} = {shape} (N={n}, M={m}, d={d}, K={k})")
        if len(self.classes) != k:
            raise ValueError(f"classes has {len(self.classes)} entries, expected K = {k}")
        if n < 1:
            raise ValueError("a Dataset needs at least one training sample, got N = 0")
        for field in ("x_train", "y_train", "x_test", "y_test"):
            _check_finite(field, getattr(self, field))
        for field in ("labels_train", "labels_test"):
            a = getattr(self, field)
            if a.size and (a.min() < 0 or a.max() >= k):
                raise ValueError(f"{field} must lie in [0, {k}), got values {a.min()}..{a.max()}")

    @property
    def num_train(self) -> int:
        return int(self.x_train.shape[0])

    @property
    def num_test(self) -> int:
        return int(self.x_test.shape[0])

    @property
    def dim(self) -> int:
        return int(self.x_train.shape[1])

    @property
    def num_classes(self) -> int:
        return int(self.y_train.shape[1])


@dataclass(frozen=True, eq=False)
class Partition:
    """Training samples of ``dataset`` split across ``num_agents = Q >= 1`` agents.

    ``agent`` ``(N,)`` int64 is the agent of each training sample *in the order of*
    ``dataset`` (any order: ``agent[i]`` owns ``dataset.x_train[i]``); every agent holds
    at least one sample. ``scheme`` is one of :data:`SCHEMES`. ``order`` (a stable
    argsort of ``agent``) and ``offsets`` describe the agent-sorted layout that
    :meth:`sorted` returns: agent ``q`` owns ``order[offsets[q]:offsets[q+1]]``.
    """

    dataset: Dataset
    agent: np.ndarray
    num_agents: int
    scheme: str

    def __post_init__(self) -> None:
        q = self.num_agents
        if isinstance(q, bool) or not isinstance(q, (int, np.integer)) or q < 1:
            raise ValueError(f"num_agents must be an integer >= 1, got {q!r}")
        object.__setattr__(self, "num_agents", int(q))
        if self.scheme not in SCHEMES:
            raise ValueError(f"unknown scheme {self.scheme!r}; valid: {', '.join(SCHEMES)}")
        agent = _as_labels("agent", self.agent)
        object.__setattr__(self, "agent", agent)
        n = self.dataset.num_train
        if agent.shape != (n,):
            raise ValueError(f"agent has shape {agent.shape}, expected (N,) = ({n},)")
        if agent.min() < 0 or agent.max() >= q:
            raise ValueError(f"agent must lie in [0, {q}), got values {agent.min()}..{agent.max()}")
        empty = np.flatnonzero(np.bincount(agent, minlength=q) == 0)
        if empty.size:
            raise ValueError(f"agent {empty[0]} has an empty shard ({empty.size} of {q} agents "
                             "hold no training sample); every agent needs at least one")

    @property
    def counts(self) -> np.ndarray:
        """``(Q,)`` number of training samples of each agent."""
        return np.bincount(self.agent, minlength=self.num_agents)

    @property
    def offsets(self) -> np.ndarray:
        """``(Q + 1,)`` start of each agent's block in ``order``; ``offsets[-1] = N``."""
        return np.concatenate(([0], np.cumsum(self.counts))).astype(np.int64)

    @functools.cached_property
    def order(self) -> np.ndarray:
        """``(N,)`` int64: sample indices sorted stably by agent (agent 0's first)."""
        return np.argsort(self.agent, kind="stable").astype(np.int64)

    @property
    def is_sorted(self) -> bool:
        """Whether ``agent`` is non-decreasing (each agent's samples contiguous)."""
        return bool(np.all(np.diff(self.agent) >= 0))

    def sorted(self) -> Partition:
        """The same partition with the training samples reordered by agent (``order``):
        ``agent`` non-decreasing, agent ``q``'s samples at ``offsets[q]:offsets[q+1]``
        in data-set order. ``self`` if already sorted."""
        if self.is_sorted:
            return self
        cached = self.__dict__.get("_sorted")
        if cached is None:
            o, ds = self.order, self.dataset
            cached = Partition(dataclasses.replace(ds, x_train=ds.x_train[o],
                                                   y_train=ds.y_train[o],
                                                   labels_train=ds.labels_train[o]),
                               self.agent[o], self.num_agents, self.scheme)
            self.__dict__["_sorted"] = cached
        return cached

    def shard(self, q: int) -> tuple[np.ndarray, np.ndarray]:
        """Inputs ``(N_q, d)`` and targets ``(N_q, K)`` of agent ``q`` (data-set order)."""
        if isinstance(q, bool) or not isinstance(q, int | np.integer) or \
                not 0 <= q < self.num_agents:
            raise ValueError(f"agent index q must be an integer in [0, {self.num_agents}), "
                             f"got {q!r}")
        idx = self.order[self.offsets[q]:self.offsets[q + 1]]
        return self.dataset.x_train[idx], self.dataset.y_train[idx]

    def label_histogram(self) -> np.ndarray:
        """``(Q, K)`` int64: how many samples of each class each agent holds."""
        q, k = self.num_agents, self.dataset.num_classes
        flat = self.agent * k + self.dataset.labels_train
        return np.bincount(flat, minlength=q * k).reshape(q, k)


def check_partition(parts) -> Partition:
    """``parts`` if it is a :class:`Partition`, else ``ValueError`` naming ``parts`` and
    what was given (a :class:`Dataset`: split it across the agents first)."""
    if isinstance(parts, Partition):
        return parts
    hint = (": split the Dataset across the agents first, nd.data.partition(data, agents=Q)"
            if isinstance(parts, Dataset) else "")
    raise ValueError("parts: expected an ntkdyn.data.Partition (see ntkdyn.data.partition), "
                     f"got {type(parts).__name__}{hint}")


def _standardise(x_train: np.ndarray, x_test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mean, std = x_train.mean(axis=0), x_train.std(axis=0)
    constant = std <= 1e-12 * np.maximum(1.0, np.abs(mean))
    scale = np.where(constant, 1.0, std)
    out = []
    for x in (x_train, x_test):
        z = (x - mean) / scale
        z[:, constant] = 0.0
        out.append(z)
    return out[0], out[1]


def _assemble(name: str, classes: tuple[int, ...], x_train: np.ndarray,
              labels_train: np.ndarray, x_test: np.ndarray, labels_test: np.ndarray,
              standardise: bool, centre_targets: bool) -> Dataset:
    x_train = np.asarray(x_train, dtype=np.float64)
    x_test = np.asarray(x_test, dtype=np.float64).reshape(-1, x_train.shape[1])
    if x_train.shape[0] == 0:
        raise ValueError(f"{name}: a Dataset needs at least one training sample, got none")
    if standardise:
        x_train, x_test = _standardise(x_train, x_test)
    k = len(classes)
    targets = []
    for labels in (labels_train, labels_test):
        y = np.zeros((labels.size, k))
        y[np.arange(labels.size), labels] = 1.0
        targets.append(y - 1.0 / k if centre_targets else y)
    return Dataset(x_train, targets[0], x_test, targets[1], labels_train, labels_test,
                   name, classes)


def _classes_arg(classes: Iterable[int], available: Iterable[int]) -> tuple[int, ...]:
    available = tuple(available)
    given = tuple(classes)
    bad = [c for c in given if isinstance(c, bool) or not isinstance(c, int | np.integer)]
    if bad:
        raise ValueError(f"classes: expected integer labels from {available}, got {bad[0]!r} "
                         f"in {list(given)!r}")
    chosen = tuple(int(c) for c in given)
    if len(set(chosen)) != len(chosen) or not set(chosen) <= set(available):
        raise ValueError(f"classes must be distinct labels from {available}, got {chosen}")
    if len(chosen) < 2:
        raise ValueError(f"classes must be at least 2 distinct labels from {available} (with "
                         f"one class there is nothing to classify), got {chosen}")
    return chosen


def _select(raw: np.ndarray, classes: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Positions of samples whose label is in ``classes``, and their class indices."""
    keep = np.flatnonzero(np.isin(raw, classes))
    index = np.full(max(classes) + 1, -1, dtype=np.int64)
    index[list(classes)] = np.arange(len(classes))
    return keep, index[raw[keep]]


def _check_size(field: str, n: int | None) -> None:
    if n is not None and (not is_real(n) or not np.isfinite(n) or int(n) != n or n < 0):
        raise ValueError(f"{field} must be a non-negative integer or None, got {n!r}")


def _check_stratifiable(n_train: int, n_test: int, available: int, n_classes: int,
                        given_test: bool) -> None:
    """A split stratified by class puts at least one sample of each class on each side it
    samples (scikit-learn's ``train_test_split``): say so, naming the size, before it does."""
    if n_train < n_classes and n_train < available:
        raise ValueError(f"n_train = {n_train}: the split is stratified by class, so it needs "
                         f"at least one sample per class: at least {n_classes} for "
                         f"{n_classes} classes")
    if 0 < n_test < n_classes:
        what = "" if given_test else " (the default: what n_train leaves)"
        raise ValueError(f"n_test = {n_test}{what}: the split is stratified by class, so it "
                         f"needs at least one sample per class: 0 or at least {n_classes} "
                         f"for {n_classes} classes")


def digits(classes: Iterable[int] = range(10), n_train: int | None = None,
           n_test: int | None = None, *, seed: int = 0, standardise: bool = True,
           centre_targets: bool = False) -> Dataset:
    """scikit-learn's bundled 8x8 handwritten digits (1,797 samples, d = 64).

    Keeps only ``classes`` and splits them at random, stratified by class, into
    ``n_train`` / ``n_test`` samples (defaults: 80% / 20% of those available; a default
    shrinks to fit when the other size is given). Pixels are scaled by 1/16.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    classes = _classes_arg(classes, range(10))
    check_nonnegative_int("seed", seed)
    bunch = load_digits()
    keep, labels = _select(bunch.target, classes)
    available = keep.size
    _check_size("n_train", n_train)
    _check_size("n_test", n_test)
    if n_train is None:  # the default shrinks to what the given n_test leaves
        n_train = int(0.8 * available) if n_test is None else \
            min(int(0.8 * available), available - int(n_test))
    n_train = int(n_train)
    given_test = n_test is not None
    if n_test is None:
        n_test = min(available - int(0.8 * available), max(available - n_train, 0))
    if n_train < 1:
        raise ValueError("n_train must be >= 1")
    if n_train + n_test > available:
        raise ValueError(f"n_train + n_test = {n_train + n_test} exceeds the {available} "
                         f"digits available for classes {classes}")
    _check_stratifiable(n_train, n_test, available, len(classes), given_test)
    idx = np.arange(available)
    if n_test == 0:
        train = (np.random.default_rng(seed).permutation(idx) if n_train == available else
                 train_test_split(idx, train_size=n_train, stratify=labels, random_state=seed)[0])
        test = idx[:0]
    else:
        train, test = train_test_split(idx, train_size=n_train, test_size=n_test,
                                       stratify=labels, random_state=seed)
    x = bunch.data[keep] / 16.0
    return _assemble("digits", classes, x[train], labels[train], x[test], labels[test],
                     standardise, centre_targets)


def synthetic(n_train: int = 512, n_test: int = 256, dim: int = 16, classes: int = 4, *,
              separation: float = 2.0, seed: int = 0, standardise: bool = True,
              centre_targets: bool = False) -> Dataset:
    """Gaussian mixture: ``x = mu_c + noise``, noise ``~ N(0, I_dim)``.

    The ``classes`` means ``mu_c`` point in uniformly random directions and have norm
    ``separation``. Classes are balanced (counts differ by at most one) in both splits.
    """
    for field, value, low in (("n_train", n_train, 1), ("n_test", n_test, 0),
                              ("dim", dim, 1), ("classes", classes, 2)):
        if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < low:
            raise ValueError(f"{field} must be an integer >= {low}, got {value!r}")
    if not (is_real(separation) and np.isfinite(separation) and separation >= 0):
        raise ValueError(f"separation must be a finite number >= 0, got {separation!r}")
    check_nonnegative_int("seed", seed)
    rng = np.random.default_rng(seed)
    means = rng.standard_normal((classes, dim))
    means *= separation / np.linalg.norm(means, axis=1, keepdims=True)
    parts = []
    for n in (n_train, n_test):
        labels = rng.permutation(np.arange(n) % classes).astype(np.int64)
        parts += [means[labels] + rng.standard_normal((n, dim)), labels]
    return _assemble("synthetic", tuple(range(classes)), *parts, standardise, centre_targets)


def from_arrays(x_train: np.ndarray, labels_train: np.ndarray, x_test: np.ndarray,
                labels_test: np.ndarray, *, name: str = "arrays", standardise: bool = True,
                centre_targets: bool = False) -> Dataset:
    """A :class:`Dataset` from the caller's arrays and integer labels.

    ``classes`` are the sorted distinct labels of both splits; targets are their one-hot
    codes. ``x_test`` may have zero rows.
    """
    xs, labels = [], []
    for field, x, lab_field, lab in (("x_train", x_train, "labels_train", labels_train),
                                     ("x_test", x_test, "labels_test", labels_test)):
        x, lab = np.asarray(x, dtype=np.float64), _as_labels(lab_field, lab)
        if x.ndim != 2:
            raise ValueError(f"{field} must be 2-D (samples, features), got shape {x.shape}")
        if lab.shape != (x.shape[0],):
            raise ValueError(f"{lab_field} has shape {lab.shape}, expected ({x.shape[0]},) "
                             f"to match the rows of {field}")
        _check_finite(field, x)
        xs.append(x)
        labels.append(lab)
    if xs[1].shape[1] != xs[0].shape[1]:
        raise ValueError(f"x_test has {xs[1].shape[1]} features, x_train has {xs[0].shape[1]}")
    classes = np.unique(np.concatenate(labels))
    index = [np.searchsorted(classes, lab).astype(np.int64) for lab in labels]
    return _assemble(name, tuple(int(c) for c in classes), xs[0], index[0], xs[1], index[1],
                     standardise, centre_targets)


def _from_splits(name: str, classes: Iterable[int], splits: list[tuple[np.ndarray, np.ndarray]],
                 sizes: tuple[int | None, int | None], seed: int, standardise: bool,
                 centre_targets: bool) -> Dataset:
    """Keep ``classes``, draw seeded random subsets of the official splits, scale to [0, 1]."""
    classes = _classes_arg(classes, range(10))
    rng, parts = np.random.default_rng(seed), []
    for split, (x, raw), n in zip(("train", "test"), splits, sizes, strict=True):
        _check_size(f"n_{split}", n)
        keep, labels = _select(raw, classes)
        if n is None:
            pick = np.arange(keep.size)
        elif n > keep.size:
            raise ValueError(f"n_{split} = {n} exceeds the {keep.size} {split} samples of "
                             f"{name} with classes {classes} (the {split} split holds "
                             f"{raw.size} samples of all classes)")
        else:
            pick = np.sort(rng.choice(keep.size, int(n), replace=False))
        flat = x.reshape(x.shape[0], math.prod(x.shape[1:]))  # -1 fails on an empty split
        parts += [flat[keep[pick]] / 255.0, labels[pick]]
    return _assemble(name, classes, *parts, standardise, centre_targets)


def _find(directory: Path, name: str, expected: tuple[str, ...], gz: bool = True) -> Path:
    if directory.exists() and not directory.is_dir():
        raise FileNotFoundError(f"{directory} is a file, not the folder holding "
                                f"{', '.join(expected)}")
    for candidate in (directory / name, directory / f"{name}.gz") if gz else (directory / name,):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"{name} not found in {directory}; expected the files "
                            f"{', '.join(expected)}" + (" (each optionally .gz)" if gz else ""))


def _read_idx(file: Path) -> np.ndarray:
    """Parse an IDX file: magic ``00 00 <dtype> <ndim>``, ndim big-endian uint32 sizes, data."""
    try:
        with (gzip.open if file.suffix == ".gz" else open)(file, "rb") as f:
            raw = f.read()
    except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
        raise ValueError(f"{file}: not a readable gzip file ({exc}); the file is truncated or "
                         "corrupt, download it again") from None
    if len(raw) < 4 or raw[0] or raw[1] or raw[2] not in _IDX_DTYPES:
        raise ValueError(f"{file} is not an IDX file (magic number {raw[:4].hex() or 'missing'})")
    header = 4 + 4 * raw[3]
    if len(raw) < header:
        raise ValueError(f"{file}: truncated IDX header")
    dims = tuple(int(s) for s in np.frombuffer(raw, ">u4", count=raw[3], offset=4))
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    if len(raw) != header + math.prod(dims) * dtype.itemsize:  # no int64 overflow
        raise ValueError(f"{file}: header announces shape {dims} of {dtype}, "
                         f"but the file holds {len(raw) - header} data bytes")
    return np.frombuffer(raw, dtype, offset=header).reshape(dims)


def _load_idx(name: str, path: str | Path, n_train: int | None, n_test: int | None,
              classes: Iterable[int], seed: int, standardise: bool,
              centre_targets: bool) -> Dataset:
    files = [_find(Path(path), f, _MNIST_FILES) for f in _MNIST_FILES]
    arrays = [_read_idx(f) for f in files]
    for images, labels, image_file, label_file in ((arrays[0], arrays[1], *files[:2]),
                                                   (arrays[2], arrays[3], *files[2:])):
        if labels.ndim != 1:
            raise ValueError(f"{label_file}: expected a 1-D array of labels, got shape "
                             f"{labels.shape}")
        if images.ndim < 2:
            raise ValueError(f"{image_file}: expected an array of images (samples first), "
                             f"got shape {images.shape}")
        if labels.shape[0] != images.shape[0]:
            raise ValueError(f"{label_file} holds {labels.shape[0]} labels but {image_file.name} "
                             f"holds {images.shape[0]} images; the two files must describe the "
                             "same samples")
        with np.errstate(invalid="ignore"):  # NaN compares False: counted as outside
            outside = ~((labels >= 0) & (labels <= 9) & (labels == np.round(labels)))
        if outside.any():
            raise ValueError(f"{label_file}: labels must be integers in 0..9, found "
                             f"{_short_values(labels)} ({int(outside.sum())} of "
                             f"{labels.size} outside); check the file's dtype and byte order")
    if arrays[0].shape[1:] != arrays[2].shape[1:]:
        raise ValueError(f"{files[2]}: images of shape {arrays[2].shape[1:]}, but "
                         f"{files[0].name} holds images of shape {arrays[0].shape[1:]}; the "
                         "training and test images must have the same size")
    splits = [(arrays[0], arrays[1].astype(np.int64)), (arrays[2], arrays[3].astype(np.int64))]
    return _from_splits(name, classes, splits, (n_train, n_test), seed, standardise,
                        centre_targets)


def load_mnist(path: str | Path, n_train: int | None = None, n_test: int | None = None, *,
               classes: Iterable[int] = range(10), seed: int = 0, standardise: bool = True,
               centre_targets: bool = False) -> Dataset:
    """MNIST from the four standard IDX files (optionally ``.gz``) in directory ``path``.

    Images are flattened (d = 784) and scaled by 1/255; ``n_train`` / ``n_test`` draw a
    seeded random subset of the official 60,000 / 10,000 split (default: all of it).
    """
    return _load_idx("mnist", path, n_train, n_test, classes, seed, standardise,
                     centre_targets)


def load_fashion_mnist(path: str | Path, n_train: int | None = None,
                       n_test: int | None = None, *, classes: Iterable[int] = range(10),
                       seed: int = 0, standardise: bool = True,
                       centre_targets: bool = False) -> Dataset:
    """Fashion-MNIST, same file names and conventions as :func:`load_mnist`."""
    return _load_idx("fashion_mnist", path, n_train, n_test, classes, seed, standardise,
                     centre_targets)


def _read_cifar_batch(file: Path) -> tuple[np.ndarray, np.ndarray]:
    """``data`` and ``labels`` of one CIFAR-10 batch; ``ValueError`` naming ``file`` if the
    file is not such a pickle (corrupt, truncated, or another format)."""
    try:
        with open(file, "rb") as f:
            batch = pickle.load(f, encoding="bytes")
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError,
            ImportError, IndexError, KeyError, UnicodeDecodeError, OverflowError) as exc:
        raise ValueError(f"{file}: not a CIFAR-10 batch (the pickle cannot be read: "
                         f"{type(exc).__name__}: {exc}); the file is truncated or "
                         "corrupt") from None
    if not isinstance(batch, dict) or b"data" not in batch or b"labels" not in batch:
        found = sorted(map(repr, batch))[:6] if isinstance(batch, dict) else []
        raise ValueError(f"{file}: not a CIFAR-10 batch (expected a dict with keys b'data' "
                         f"and b'labels', got {type(batch).__name__}"
                         + (f" with keys {', '.join(found)}" if found else "") + ")")
    try:
        raw = np.asarray(batch[b"labels"])
        labels = raw.astype(np.int64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{file}: b'labels' must be integers ({exc})") from None
    if raw.ndim != 1 or not np.array_equal(labels, raw) or (
            labels.size and (labels.min() < 0 or labels.max() > 9)):
        raise ValueError(f"{file}: b'labels' must be integer labels in 0..9, found "
                         f"{_short_values(raw)}")
    return np.asarray(batch[b"data"]), labels


def _short_values(arr: np.ndarray) -> str:
    """The distinct values of ``arr`` outside the labels 0..9, for an error (at most 5)."""
    flat = np.asarray(arr).ravel()
    with np.errstate(invalid="ignore"):
        bad = [v for v in np.unique(flat) if not (np.isfinite(v) and float(v).is_integer()
                                                  and 0 <= v <= 9)] \
            if flat.dtype.kind in "iuf" else list(np.unique(flat.astype(str)))
    return (", ".join(repr(v.item() if hasattr(v, "item") else v) for v in bad[:5])
            + (" ..." if len(bad) > 5 else "") if bad else f"shape {np.shape(arr)}")


def load_cifar10(path: str | Path, n_train: int | None = None, n_test: int | None = None, *,
                 classes: Iterable[int] = range(10), seed: int = 0, standardise: bool = True,
                 centre_targets: bool = False) -> Dataset:
    """CIFAR-10, "python version": ``data_batch_1..5`` and ``test_batch`` in ``path``
    or in ``path/cifar-10-batches-py``.

    Each batch is a pickle with ``b'data'`` ``(n, 3072)`` uint8 and ``b'labels'``.
    Unpickling can run code: load only files you trust. d = 3072 (channel-major, as
    stored), scaled by 1/255; subsets as in :func:`load_mnist`.
    """
    directory = Path(path)
    if not (directory / "test_batch").is_file() and (directory / "cifar-10-batches-py").is_dir():
        directory = directory / "cifar-10-batches-py"
    batches = []
    for name in _CIFAR_FILES:
        data, labels = _read_cifar_batch(_find(directory, name, _CIFAR_FILES, gz=False))
        if data.ndim != 2 or data.shape[1] != 3072:
            raise ValueError(f"{directory / name}: b'data' has shape {data.shape}, expected "
                             "(images, 3072): 32 x 32 x 3 bytes per image")
        if data.shape[0] != labels.size:
            raise ValueError(f"{directory / name}: {labels.size} labels for "
                             f"{data.shape[0]} images; b'data' and b'labels' must describe "
                             "the same images")
        batches.append((data, labels))
    train = (np.concatenate([b[0] for b in batches[:5]]),
             np.concatenate([b[1] for b in batches[:5]]))
    return _from_splits("cifar10", classes, [train, batches[5]], (n_train, n_test), seed,
                        standardise, centre_targets)


def _near_equal(n: int, parts: int) -> np.ndarray:
    return n // parts + (np.arange(parts) < n % parts)


def _dirichlet(labels: np.ndarray, k: int, q: int, alpha: float, seed: int) -> np.ndarray:
    n = labels.size
    for attempt in range(100):
        rng, owner = np.random.default_rng(seed + attempt), np.empty(n, dtype=np.int64)
        for c in range(k):
            members = rng.permutation(np.flatnonzero(labels == c))
            share = rng.dirichlet(np.full(q, alpha))
            cuts = np.clip(np.floor(np.cumsum(share)[:-1] * members.size), 0, members.size)
            sizes = np.diff(np.concatenate(([0], cuts, [members.size]))).astype(np.int64)
            owner[members] = np.repeat(np.arange(q), sizes)
        if np.bincount(owner, minlength=q).min() > 0:
            return owner
    raise ValueError(f"scheme 'dirichlet' left an agent without samples in 100 draws (seeds "
                     f"{seed}..{seed + 99}): {n} samples are too few for {q} agents at "
                     f"alpha = {alpha}; use more samples, fewer agents or a larger alpha")


def partition(data: Dataset, agents: int, scheme: str = "iid", *, alpha: float = 1.0,
              shards_per_agent: int = 2, seed: int = 0,
              agent: np.ndarray | None = None) -> Partition:
    """Split the training samples of ``data`` across ``agents`` agents.

    Parameters
    ----------
    data : Dataset
    agents : int
        Number of agents ``Q``, ``1 <= Q <= N``.
    scheme : {"iid", "shards", "dirichlet", "given"}
        ``"iid"``: random permutation cut into near-equal parts (sizes differ by <= 1).
        ``"shards"``: samples sorted by label (random order within a class), cut into
        ``Q * shards_per_agent`` near-equal shards, ``shards_per_agent`` dealt at random
        to each agent. A shard may straddle a class boundary, so an agent sees at most
        ``shards_per_agent`` labels only when class sizes are multiples of the shard size.
        ``"dirichlet"``: for each class, proportions ``p ~ Dirichlet(alpha 1_Q)`` and the
        class's samples (shuffled) cut at ``floor(cumsum(p) n_c)``; redrawn with seeds
        ``seed + 1, ...`` (up to 100 draws) until every agent holds a sample. Small
        ``alpha`` is very skewed; large ``alpha`` approaches iid.
        ``"given"``: ``agent[i]`` is the agent of training sample ``i``.
    alpha : float
        Dirichlet concentration, > 0.
    shards_per_agent : int
        Shards per agent for ``"shards"``, >= 1.
    seed : int
    agent : np.ndarray, optional
        ``(N,)`` integers in ``[0, Q)``, required by (and only by) ``"given"``.

    Returns
    -------
    Partition
        ``dataset`` is ``data`` itself (sample order kept) and ``agent[i]`` the agent of
        ``data.x_train[i]``: a kernel computed on ``data.x_train`` goes with ``agent``.
    """
    if isinstance(agents, bool) or not isinstance(agents, (int, np.integer)) or agents < 1:
        raise ValueError(f"agents must be an integer >= 1, got {agents!r}")
    if scheme not in SCHEMES:
        raise ValueError(f"unknown scheme {scheme!r}; valid schemes: {', '.join(SCHEMES)}")
    if not (is_real(alpha) and np.isfinite(alpha) and alpha > 0):
        raise ValueError(f"alpha (Dirichlet concentration) must be a finite number > 0 (large "
                         f"values approach iid), got {alpha!r}")
    check_nonnegative_int("seed", seed)
    if not isinstance(data, Dataset):
        raise ValueError(f"data: expected an ntkdyn.data.Dataset (e.g. nd.data.digits()), got "
                         f"{type(data).__name__}"
                         + (" (already partitioned: its .dataset)" if isinstance(data, Partition)
                            else ""))
    if (agent is not None) != (scheme == "given"):
        raise ValueError("pass agent= exactly when scheme='given'")
    n, q = data.num_train, int(agents)
    if q > n:
        raise ValueError(f"cannot give {q} agents a sample each from {n} training samples")
    rng = np.random.default_rng(seed)
    if scheme == "iid":
        owner = np.empty(n, dtype=np.int64)
        owner[rng.permutation(n)] = np.repeat(np.arange(q), _near_equal(n, q))
    elif scheme == "shards":
        spa = shards_per_agent
        if isinstance(spa, bool) or not isinstance(spa, (int, np.integer)) or spa < 1:
            raise ValueError(f"shards_per_agent must be an integer >= 1, got {spa!r}")
        if q * spa > n:
            raise ValueError(f"scheme 'shards' needs at least agents * shards_per_agent = "
                             f"{q * spa} training samples, got {n}")
        perm = rng.permutation(n)
        by_label = perm[np.argsort(data.labels_train[perm], kind="stable")]
        shard = np.repeat(np.arange(q * spa), _near_equal(n, q * spa))
        owner = np.empty(n, dtype=np.int64)
        owner[by_label] = (rng.permutation(q * spa) // spa)[shard]
    elif scheme == "dirichlet":
        owner = _dirichlet(data.labels_train, data.num_classes, q, float(alpha), seed)
    else:
        owner = _as_labels("agent", agent)
        if owner.shape != (n,):
            raise ValueError(f"agent has shape {owner.shape}, expected (N,) = ({n},)")
    return Partition(data, owner, q, scheme)
