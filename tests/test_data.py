"""Tests for ntkdyn.data: data sets, preprocessing conventions, partitions, loaders."""

import gzip
import pickle

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ntkdyn.data import (
    Dataset,
    Partition,
    digits,
    from_arrays,
    load_cifar10,
    load_fashion_mnist,
    load_mnist,
    partition,
    synthetic,
)


def _tv_from_global(p: Partition) -> float:
    """Mean total-variation distance of the agents' label distributions from the global one."""
    hist = p.label_histogram().astype(float)
    local = hist / hist.sum(axis=1, keepdims=True)
    overall = hist.sum(axis=0) / hist.sum()
    return float(np.mean(0.5 * np.abs(local - overall).sum(axis=1)))


def _small(n: int = 40, k: int = 3) -> Dataset:
    x = np.arange(n, dtype=float)[:, None] * np.ones((1, 2))
    labels = np.arange(n) % k
    return from_arrays(x, labels, x[:5], labels[:5], standardise=False)


# ----------------------------------------------------------------------------- data sets
def test_digits_shapes_and_defaults():
    d = digits()
    assert (d.num_train, d.num_test, d.dim, d.num_classes) == (1437, 360, 64, 10)
    assert d.x_train.dtype == np.float64 and d.labels_train.dtype == np.int64
    assert d.classes == tuple(range(10)) and d.name == "digits"
    np.testing.assert_array_equal(d.y_train.argmax(axis=1), d.labels_train)
    np.testing.assert_array_equal(d.y_train.sum(axis=1), 1.0)


def test_digits_determinism_seed_and_classes_subset():
    a, b, c = digits((3, 5, 8), 60, 30, seed=1), digits((3, 5, 8), 60, 30, seed=1), \
        digits((3, 5, 8), 60, 30, seed=2)
    np.testing.assert_array_equal(a.x_train, b.x_train)
    assert not np.array_equal(a.x_train, c.x_train)
    assert a.classes == (3, 5, 8) and a.y_train.shape == (60, 3) and a.y_test.shape == (30, 3)
    # stratified: each class gets its share (183 / 182 / 174 of 539 available) to within 1
    share = np.array([183, 182, 174]) / 539
    assert np.all(np.abs(np.bincount(a.labels_train) - 60 * share) <= 1)
    assert np.all(np.abs(np.bincount(a.labels_test) - 30 * share) <= 1)
    # class index k is digit classes[k], in the order given; pixels scaled by 1/16
    from sklearn.datasets import load_digits

    bunch = load_digits()
    e = digits((8, 3), 20, 10, standardise=False)
    rows = {tuple(r): t for r, t in zip(bunch.data / 16.0, bunch.target, strict=True)}
    assert [rows[tuple(r)] for r in e.x_train] == [(8, 3)[k] for k in e.labels_train]


def test_digits_sizes_errors():
    with pytest.raises(ValueError, match="1797 digits available"):
        digits(n_train=1500, n_test=400)
    assert digits(n_train=1500).num_test == 297
    with pytest.raises(ValueError, match="classes must be distinct"):
        digits(classes=(1, 11))
    with pytest.raises(ValueError, match="classes must be at least 2 distinct labels"):
        digits(classes=(4,))
    with pytest.raises(ValueError, match="classes must be an integer >= 2"):
        synthetic(classes=1)
    # the split is stratified by class: fewer samples than classes on a side it samples is
    # refused naming the size (it was scikit-learn's "train_size = 5 should be greater or
    # equal to the number of classes"), the defaulted test size said to be a default
    with pytest.raises(ValueError, match=r"^n_train = 5: .* at least 10 for 10 classes"):
        digits(n_train=5)
    with pytest.raises(ValueError, match=r"^n_test = 5: .* 0 or at least 10"):
        digits(n_train=800, n_test=5)
    with pytest.raises(ValueError, match=r"^n_test = 7 \(the default: what n_train leaves\)"):
        digits(n_train=1790)
    assert digits(classes=(0, 1), n_train=2, n_test=2).num_train == 2
    assert digits(n_train=1797, n_test=0).num_test == 0


def test_synthetic_balanced_deterministic_and_separated():
    a = synthetic(100, 50, dim=5, classes=4, seed=3, standardise=False)
    assert a.x_train.shape == (100, 5) and a.y_test.shape == (50, 4)
    counts = np.bincount(a.labels_train, minlength=4)
    assert counts.max() - counts.min() <= 1
    np.testing.assert_array_equal(a.x_train, synthetic(100, 50, 5, 4, seed=3,
                                                       standardise=False).x_train)
    assert not np.array_equal(a.x_train, synthetic(100, 50, 5, 4, seed=4).x_train)
    big = synthetic(2000, 0, dim=3, classes=2, separation=10.0, standardise=False)
    means = [big.x_train[big.labels_train == c].mean(axis=0) for c in range(2)]
    np.testing.assert_allclose([np.linalg.norm(m) for m in means], 10.0, rtol=0.05)


def test_standardise_uses_train_statistics_and_zeroes_constant_features():
    d = digits()  # digits has pixels that are constant (0) on the training split
    mean, std = d.x_train.mean(axis=0), d.x_train.std(axis=0)
    constant = std == 0
    assert constant.any()
    np.testing.assert_allclose(mean, 0.0, atol=1e-12)
    np.testing.assert_allclose(std[~constant], 1.0, rtol=1e-12)
    assert np.all(d.x_test[:, constant] == 0) and np.all(np.isfinite(d.x_test))
    # test split is transformed with the train statistics, not its own
    x = np.array([[0.0, 5.0], [2.0, 5.0]])
    e = from_arrays(x, [0, 1], np.array([[4.0, 7.0]]), [1])
    np.testing.assert_allclose(e.x_train, [[-1.0, 0.0], [1.0, 0.0]])
    np.testing.assert_allclose(e.x_test, [[3.0, 0.0]])


def test_centre_targets():
    d = synthetic(30, 10, classes=3, centre_targets=True)
    np.testing.assert_allclose(d.y_train.sum(axis=1), 0.0, atol=1e-15)
    np.testing.assert_allclose(np.sort(np.unique(d.y_train)), [-1 / 3, 2 / 3])
    np.testing.assert_array_equal(d.y_test.argmax(axis=1), d.labels_test)


def test_from_arrays_maps_labels_to_sorted_classes():
    x = np.random.default_rng(0).standard_normal((6, 2))
    d = from_arrays(x, [7, 3, 7, 9, 3, 3], x[:2], [9, 7], standardise=False, name="mine")
    assert d.classes == (3, 7, 9) and d.name == "mine"
    np.testing.assert_array_equal(d.labels_train, [1, 0, 1, 2, 0, 0])
    np.testing.assert_array_equal(d.labels_test, [2, 1])
    np.testing.assert_array_equal(d.x_train, x)


# ----------------------------------------------------------------------------- partitions
def test_iid_partition_balanced_and_contiguous():
    d = synthetic(103, 10, classes=4, seed=0)
    p = partition(d, 5, "iid", seed=1)
    assert p.counts.max() - p.counts.min() <= 1 and p.counts.sum() == 103
    np.testing.assert_array_equal(p.offsets, np.concatenate(([0], np.cumsum(p.counts))))
    assert p.scheme == "iid" and p.dataset is d  # the caller's order is kept (issue 12)
    s = p.sorted()  # the agent-sorted layout: agent q at offsets[q]:offsets[q+1]
    assert np.all(np.diff(s.agent) >= 0)
    x2, y2 = p.shard(2)
    np.testing.assert_array_equal(x2, s.dataset.x_train[p.offsets[2]:p.offsets[3]])
    np.testing.assert_array_equal(x2, d.x_train[p.agent == 2])  # data-set order in a shard
    assert y2.shape == (p.counts[2], 4)
    assert p.label_histogram().shape == (5, 4) and p.label_histogram().sum() == 103
    np.testing.assert_array_equal(p.agent, partition(d, 5, "iid", seed=1).agent)
    np.testing.assert_array_equal(p.dataset.x_test, d.x_test)
    assert not np.array_equal(p.agent, partition(d, 5, seed=2).agent)
    assert not np.array_equal(s.dataset.x_train, partition(d, 5, seed=2).sorted().dataset.x_train)


def test_shards_partition_limits_labels_per_agent():
    d = synthetic(400, 10, classes=4, seed=0)  # 100 per class, shards of 20: aligned
    p = partition(d, 10, "shards", shards_per_agent=2, seed=3)
    labels_per_agent = (p.label_histogram() > 0).sum(axis=1)
    assert labels_per_agent.max() <= 2
    np.testing.assert_array_equal(p.counts, 40)
    iid = partition(d, 10, "iid", seed=3)
    assert _tv_from_global(p) > _tv_from_global(iid) + 0.25


def test_dirichlet_skew_grows_as_alpha_shrinks():
    d = synthetic(1000, 10, classes=5, seed=0)
    skewed = partition(d, 10, "dirichlet", alpha=0.1, seed=0)
    flat = partition(d, 10, "dirichlet", alpha=100.0, seed=0)
    assert np.all(skewed.counts >= 1) and skewed.counts.sum() == 1000
    assert _tv_from_global(skewed) > 0.4 > 0.1 > _tv_from_global(flat)
    np.testing.assert_array_equal(skewed.agent,
                                  partition(d, 10, "dirichlet", alpha=0.1, seed=0).agent)


def test_dirichlet_gives_up_with_explanation():
    d = _small(3, 1)
    with pytest.raises(ValueError, match="too few .* larger alpha"):
        partition(d, 3, "dirichlet", alpha=0.001)


def test_given_partition_keeps_order_and_sorts_stably():
    # issue 12 item 6: parts.agent[i] is the agent of data.x_train[i] (it used to line up
    # with a reordered parts.dataset); the sorted layout is parts.sorted()
    d = _small(6, 2)
    given = np.array([2, 0, 1, 0, 2, 1])
    p = partition(d, 3, "given", agent=given)
    np.testing.assert_array_equal(p.agent, given)
    assert p.dataset is d and not p.is_sorted
    np.testing.assert_array_equal(p.order, [1, 3, 2, 5, 0, 4])
    s = p.sorted()
    assert s.is_sorted and s.sorted() is s and p.sorted() is s
    np.testing.assert_array_equal(s.agent, [0, 0, 1, 1, 2, 2])
    np.testing.assert_array_equal(s.dataset.x_train[:, 0], [1, 3, 2, 5, 0, 4])
    np.testing.assert_array_equal(s.dataset.labels_train, [1, 1, 0, 1, 0, 0])
    np.testing.assert_array_equal(p.shard(0)[0][:, 0], [1, 3])
    np.testing.assert_array_equal(p.label_histogram(), s.label_histogram())


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 60), k=st.integers(1, 5), frac=st.floats(0.0, 1.0),
       scheme=st.sampled_from(["iid", "shards", "dirichlet"]), seed=st.integers(0, 2**16))
def test_partition_preserves_samples_and_fills_every_agent(n, k, frac, scheme, seed):
    d = _small(n, k)
    q = max(1, int(frac * n))
    if scheme == "shards":
        q = max(1, q // 2)
    if scheme == "dirichlet":
        q = max(1, min(q, n // 8))
    p = partition(d, q, scheme, seed=seed, alpha=1.0, shards_per_agent=2 if n > 1 else 1)
    ids = p.dataset.x_train[:, 0].astype(int)
    np.testing.assert_array_equal(np.sort(ids), np.arange(n))
    np.testing.assert_array_equal(p.dataset.labels_train, ids % k)
    assert p.counts.min() >= 1 and p.counts.size == q and p.offsets[-1] == n


# ----------------------------------------------------------------------------- bad inputs
def test_nan_in_x_train_is_named():
    x = np.zeros((4, 2))
    x[2, 1] = np.nan
    with pytest.raises(ValueError, match=r"x_train .*\(2, 1\)"):
        from_arrays(x, [0, 1, 0, 1], np.zeros((1, 2)), [0])
    d = _small(4, 2)
    with pytest.raises(ValueError, match=r"x_train .*inf.*\(2, 1\)"):
        Dataset(np.where(x == x, x, np.inf), d.y_train, d.x_test, d.y_test, d.labels_train,
                d.labels_test, "bad", d.classes)


def test_mismatched_shapes():
    d = _small(4, 2)
    with pytest.raises(ValueError, match=r"y_train has shape \(3, 2\), expected \(N, K\)"):
        Dataset(d.x_train, d.y_train[:3], d.x_test, d.y_test, d.labels_train, d.labels_test,
                "bad", d.classes)
    with pytest.raises(ValueError, match=r"x_test has shape .*expected \(M, d\)"):
        Dataset(d.x_train, d.y_train, d.x_test[:, :1], d.y_test, d.labels_train,
                d.labels_test, "bad", d.classes)
    with pytest.raises(ValueError, match="labels_train"):
        from_arrays(np.zeros((4, 2)), [0, 1, 0], np.zeros((1, 2)), [0])
    with pytest.raises(ValueError, match="features"):
        from_arrays(np.zeros((4, 2)), [0, 1, 0, 1], np.zeros((1, 3)), [0])
    with pytest.raises(ValueError, match="at least one training sample"):
        from_arrays(np.zeros((0, 2)), [], np.zeros((1, 2)), [0])


def test_empty_shard_from_given_agent():
    with pytest.raises(ValueError, match="agent 1 has an empty shard"):
        partition(_small(4, 2), 3, "given", agent=[0, 2, 2, 0])
    with pytest.raises(ValueError, match=r"expected \(N,\)"):
        partition(_small(4, 2), 2, "given", agent=[0, 1])
    with pytest.raises(ValueError, match="exactly when scheme='given'"):
        partition(_small(4, 2), 2, agent=[0, 1, 0, 1])


def test_too_many_agents():
    with pytest.raises(ValueError, match="cannot give 8 agents a sample each from 5 training"):
        partition(_small(5, 2), 8)
    with pytest.raises(ValueError, match="agents must be an integer >= 1"):
        partition(_small(5, 2), 0)


def test_unknown_scheme_lists_valid_ones():
    with pytest.raises(ValueError, match="unknown scheme 'random'.*iid, shards, dirichlet, given"):
        partition(_small(), 2, "random")


@pytest.mark.parametrize("alpha", [0.0, -1.0, float("nan")])
def test_non_positive_alpha(alpha):
    with pytest.raises(ValueError, match="alpha"):
        partition(_small(), 2, "dirichlet", alpha=alpha)


# ----------------------------------------------------------------------------- loaders
def _idx_bytes(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, array.ndim]) + np.array(array.shape, ">u4").tobytes()
    return header + array.astype(np.uint8).tobytes()


def _write_mnist(directory, gz: bool, n_train: int = 30, n_test: int = 10) -> dict:
    rng = np.random.default_rng(0)
    arrays = {"train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 3, 4)),
              "train-labels-idx1-ubyte": np.arange(n_train) % 10,
              "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 3, 4)),
              "t10k-labels-idx1-ubyte": np.arange(n_test) % 10}
    for name, array in arrays.items():
        data = _idx_bytes(array)
        if gz:
            (directory / f"{name}.gz").write_bytes(gzip.compress(data))
        else:
            (directory / name).write_bytes(data)
    return arrays


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("loader", [load_mnist, load_fashion_mnist])
def test_idx_loaders(tmp_path, gz, loader):
    arrays = _write_mnist(tmp_path, gz)
    d = loader(tmp_path, standardise=False)
    assert d.x_train.shape == (30, 12) and d.x_test.shape == (10, 12) and d.num_classes == 10
    np.testing.assert_allclose(d.x_train, arrays["train-images-idx3-ubyte"].reshape(30, 12) / 255)
    np.testing.assert_array_equal(d.labels_test, np.arange(10))
    sub = loader(str(tmp_path), 8, 2, classes=(1, 2, 3), seed=5)
    assert sub.x_train.shape == (8, 12) and sub.classes == (1, 2, 3)
    np.testing.assert_array_equal(sub.x_train, loader(tmp_path, 8, 2, classes=(1, 2, 3),
                                                      seed=5).x_train)
    assert loader(tmp_path, 5, 0).x_test.shape == (0, 12)
    with pytest.raises(ValueError, match="n_train = 10 exceeds the 9"):
        loader(tmp_path, 10, classes=(1, 2, 3))


def test_idx_loader_rejects_bad_header(tmp_path):
    _write_mnist(tmp_path, gz=False)
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(b"\x00\x00\x08\x01\x00\x00\x00\x09abc")
    with pytest.raises(ValueError, match="header announces shape"):
        load_mnist(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(b"\x12\x34\x56\x78")
    with pytest.raises(ValueError, match="not an IDX file"):
        load_mnist(tmp_path)


def test_missing_loader_file(tmp_path):
    _write_mnist(tmp_path, gz=True)
    (tmp_path / "t10k-images-idx3-ubyte.gz").unlink()
    with pytest.raises(FileNotFoundError, match="t10k-images-idx3-ubyte not found.*expected"):
        load_mnist(tmp_path)
    with pytest.raises(FileNotFoundError, match="data_batch_1 not found"):
        load_cifar10(tmp_path)


@pytest.mark.parametrize("nested", [False, True])
def test_cifar10_loader(tmp_path, nested):
    directory = tmp_path / "cifar-10-batches-py" if nested else tmp_path
    directory.mkdir(exist_ok=True)
    rng = np.random.default_rng(0)
    batches = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batches[name] = {b"data": rng.integers(0, 256, (4, 3072)).astype(np.uint8),
                         b"labels": list(rng.integers(0, 10, 4))}
        with open(directory / name, "wb") as f:
            pickle.dump(batches[name], f)
    d = load_cifar10(tmp_path, standardise=False)
    assert d.x_train.shape == (20, 3072) and d.x_test.shape == (4, 3072)
    np.testing.assert_allclose(d.x_train[:4], batches["data_batch_1"][b"data"] / 255)
    np.testing.assert_array_equal(d.labels_test, batches["test_batch"][b"labels"])
    sub = load_cifar10(tmp_path, 5, 2, centre_targets=True)
    assert sub.num_train == 5 and sub.num_test == 2
    np.testing.assert_allclose(sub.y_train.sum(axis=1), 0.0, atol=1e-15)


# ------------------------------------------------------- corrupt loader files (issue 12)
def test_truncated_gz_names_the_file(tmp_path):
    _write_mnist(tmp_path, gz=True)
    f = tmp_path / "train-images-idx3-ubyte.gz"
    f.write_bytes(f.read_bytes()[:40])  # EOFError from gzip today
    with pytest.raises(ValueError, match=r"train-images-idx3-ubyte\.gz: not a readable gzip"):
        load_mnist(tmp_path)


def test_gz_that_is_not_gzip_names_the_file(tmp_path):
    _write_mnist(tmp_path, gz=True)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").write_bytes(b"plain text, not gzip")
    with pytest.raises(ValueError, match=r"t10k-labels-idx1-ubyte\.gz: not a readable gzip"):
        load_mnist(tmp_path)


@pytest.mark.parametrize("content", [b"garbage\x00\x01", b"", pickle.dumps([1, 2, 3])])
def test_garbage_cifar_batch_names_the_file(tmp_path, content):
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        (tmp_path / name).write_bytes(content)
    with pytest.raises(ValueError, match=r"data_batch_1: not a CIFAR-10 batch"):
        load_cifar10(tmp_path)


def test_mnist_labels_out_of_range_name_the_file(tmp_path):
    """Labels written little-endian under the big-endian int32 code: today every label
    falls outside the classes and the message says 'exceeds the 0 train samples'."""
    _write_mnist(tmp_path, gz=False, n_train=200)
    labels = np.arange(200) % 10
    header = bytes([0, 0, 0x0C, 1]) + np.array([200], ">u4").tobytes()
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(header + labels.astype("<i4").tobytes())
    with pytest.raises(ValueError) as err:
        load_mnist(tmp_path, n_train=100)
    msg = str(err.value)
    assert "train-labels-idx1-ubyte: labels must be integers in 0..9" in msg and "byte order" in msg
    assert "0 train samples" not in msg


def test_mnist_labels_and_images_disagree(tmp_path):
    _write_mnist(tmp_path, gz=False, n_train=300)
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(_idx_bytes(np.arange(200) % 10))
    with pytest.raises(ValueError, match="holds 200 labels but train-images-idx3-ubyte holds "
                                         "300 images"):
        load_mnist(tmp_path)


@pytest.mark.parametrize("labels, shown", [([-1] * 4, "-1"), ([12] * 4, "12"),
                                           ([1.7] * 4, "1.7")])
def test_cifar_labels_outside_0_to_9_name_the_file(tmp_path, labels, shown):
    """Labels -1 or 12 were dropped without a word (a whole split could vanish) and 1.7 became
    class 1; MNIST refused such labels.  Now a ValueError naming the file and the labels."""
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {b"data": rng.integers(0, 256, (4, 3072)).astype(np.uint8),
                 b"labels": labels if name == "test_batch" else [0, 1, 2, 3]}
        with open(tmp_path / name, "wb") as f:
            pickle.dump(batch, f)
    with pytest.raises(ValueError, match=rf"test_batch: b'labels' must be integer labels in "
                                         rf"0..9, found {shown}$"):
        load_cifar10(tmp_path)


@pytest.mark.parametrize("classes", [[0.5, 1.7], [True, False], ["3", "4"]])
def test_classes_that_are_not_integer_labels_are_refused(classes):
    """[0.5, 1.7] became (0, 1), [True, False] (1, 0), ['3', '4'] (3, 4) silently."""
    with pytest.raises(ValueError, match="^classes: expected integer labels from"):
        digits(classes=classes, n_train=20, n_test=10)


def test_digits_n_train_default_shrinks_to_what_n_test_leaves():
    """The docstring says a default shrinks to fit the other size: n_test alone was refused
    ('n_train + n_test = 1937 exceeds the 1797 digits'); sizes of NaN or inf and seed -1
    named nothing useful."""
    d = digits(n_test=500)
    assert (d.num_train, d.num_test) == (1297, 500)
    assert (digits().num_train, digits().num_test) == (1437, 360)  # unchanged
    for kw, match in ((dict(n_train=float("nan")), "^n_train must be a non-negative integer"),
                      (dict(n_test=float("inf")), "^n_test must be a non-negative integer"),
                      (dict(seed=-1), "^seed: expected an integer >= 0, got -1")):
        with pytest.raises(ValueError, match=match):
            digits(**kw)


@pytest.mark.parametrize("kw, match", [
    (dict(scheme="dirichlet", seed=None), "^seed: expected an integer >= 0, got None"),
    (dict(scheme="iid", seed=-1), "^seed: expected an integer >= 0, got -1"),
    (dict(scheme="dirichlet", alpha=float("inf")), r"^alpha \(Dirichlet concentration\) must "
                                                  r"be a finite number > 0"),
    (dict(scheme="dirichlet", alpha="1"), r"^alpha \(Dirichlet concentration\)"),
])
def test_partition_seed_and_alpha_are_named(kw, match):
    """dirichlet with seed=None was a TypeError ('NoneType' + 'int'), alpha=inf numpy's
    'repeats may not contain negative values', alpha='1' a raw comparison TypeError."""
    data = digits(classes=[0, 1, 2, 3], n_train=120, n_test=40)
    with pytest.raises(ValueError, match=match):
        partition(data, 2, **kw)
    with pytest.raises(ValueError, match=r"^data: expected an ntkdyn.data.Dataset .* "
                                         r"\(already partitioned: its .dataset\)"):
        partition(partition(data, 2), 2)


def test_idx_images_of_another_size_and_an_empty_test_split(tmp_path):
    """Test images of another size than the training ones were blamed on y_test's shape;
    an empty (valid) test split was numpy's 'cannot reshape array of size 0'."""
    _write_mnist(tmp_path, gz=False)
    (tmp_path / "t10k-images-idx3-ubyte").write_bytes(_idx_bytes(np.zeros((10, 2, 2), int)))
    with pytest.raises(ValueError, match=r"t10k-images-idx3-ubyte: images of shape \(2, 2\), "
                                         r"but train-images-idx3-ubyte holds images of shape "
                                         r"\(3, 4\)"):
        load_mnist(tmp_path)
    (tmp_path / "t10k-images-idx3-ubyte").write_bytes(_idx_bytes(np.zeros((0, 3, 4), int)))
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(_idx_bytes(np.zeros(0, int)))
    d = load_mnist(tmp_path, standardise=False)
    assert d.num_train == 30 and d.num_test == 0


def test_cifar_batch_with_a_label_count_of_its_own_names_both(tmp_path):
    """9 labels for 10 images said 'data has shape (10, 3072), expected (9, 3072)'."""
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        with open(tmp_path / name, "wb") as f:
            pickle.dump({b"data": np.zeros((10, 3072), np.uint8),
                         b"labels": list(range(9 if name == "data_batch_2" else 10))}, f)
    with pytest.raises(ValueError, match=r"data_batch_2: 9 labels for 10 images"):
        load_cifar10(tmp_path)


@pytest.mark.parametrize("kw, match", [
    (dict(classes=2.0), "^classes must be an integer >= 2, got 2.0"),
    (dict(n_train="a"), "^n_train must be an integer >= 1, got 'a'"),
    (dict(separation="2"), "^separation must be a finite number >= 0, got '2'"),
    (dict(separation=float("inf")), "^separation must be a finite number >= 0, got inf"),
    (dict(seed=-1), "^seed: expected an integer >= 0, got -1"),
])
def test_synthetic_arguments_are_named(kw, match):
    """classes=2.0 passed the check and failed in numpy, 'a' / '2' were raw TypeErrors,
    separation=inf gave 'x_train has a non-finite value'."""
    with pytest.raises(ValueError, match=match):
        synthetic(**kw)


def test_mnist_float_labels_that_are_not_integers_name_the_file(tmp_path):
    """A NaN (or 2.5) in a float IDX label file compared False with the range check, so the
    sample was dropped later with only a RuntimeWarning."""
    _write_mnist(tmp_path, gz=False)
    labels = (np.arange(10) % 10).astype(float)
    labels[3] = np.nan
    header = bytes([0, 0, 0x0E, 1]) + np.array([10], ">u4").tobytes()
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(header + labels.astype(">f8").tobytes())
    with pytest.raises(ValueError, match=r"t10k-labels-idx1-ubyte: labels must be integers in "
                                         r"0..9, found nan \(1 of 10 outside\)"):
        load_mnist(tmp_path)
