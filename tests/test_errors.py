"""Every bad input gets a clear, specific error (one test each)."""

import warnings

import numpy as np
import pytest

import ntkdyn as nd
from ntkdyn._utils.memory import ProblemTooLargeError


def _args(n=12, q=3, k=2):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, 4))
    return dict(kernel_train=x @ x.T + np.eye(n), y_train=np.eye(k)[np.arange(n) % k],
                agent=np.arange(n) % q,
                mixing=nd.graphs.mixing(nd.graphs.topology("ring", q)), lr=0.1,
                steps=range(5))


def _raises(exc, needle, **override):
    args = {**_args(), **override}
    with pytest.raises(exc) as err:
        nd.predict_from_kernels(**args)
    assert needle in str(err.value), str(err.value)
    return str(err.value)


def test_non_stochastic_mixing():
    w = np.array([[0.5, 0.5, 0.1], [0.5, 0.5, 0], [0, 0.5, 0.5]])
    _raises(ValueError, "mixing", mixing=w)


def test_disconnected_mixing():
    w = np.array([[0.5, 0.5, 0], [0.5, 0.5, 0], [0, 0, 1.0]])
    msg = _raises(ValueError, "mixing", mixing=w)
    assert "connected" in msg


def test_negative_mixing_entry():
    w = np.array([[1.2, -0.2, 0], [0, 0.5, 0.5], [0.5, 0, 0.5]])
    _raises(ValueError, "mixing", mixing=w)


@pytest.mark.parametrize("lr", [0.0, -0.5, [0.1, 0.0, 0.2]])
def test_non_positive_learning_rate(lr):
    _raises(ValueError, "lr: learning rates must be > 0", lr=lr)


def test_learning_rate_wrong_length():
    _raises(ValueError, "lr: expected a positive number or an array of 3", lr=[0.1, 0.2])


def test_empty_agent_shard():
    _raises(ValueError, "agent 2 has an empty shard", agent=np.arange(12) % 2)


def test_agent_index_out_of_range():
    _raises(ValueError, "agent: expected indices in [0, 3)", agent=np.arange(12) % 4)


def test_nan_in_targets():
    y = np.eye(2)[np.arange(12) % 2]
    y[3, 1] = np.nan
    _raises(ValueError, "y_train: expected finite values", y_train=y)


def test_nan_in_kernel():
    k = _args()["kernel_train"].copy()
    k[2, 5] = np.nan
    _raises(ValueError, "kernel_train: expected finite values", kernel_train=k)


def test_nan_in_data_set():
    x = np.random.default_rng(0).normal(size=(10, 3))
    x[4, 0] = np.nan
    with pytest.raises(ValueError, match="x_train"):
        nd.data.from_arrays(x, np.arange(10) % 2, x[:3] * 0, np.arange(3) % 2)


def test_kernel_shape_mismatch():
    _raises(ValueError, "kernel_train: expected shape (12, 12)", kernel_train=np.eye(11))


def test_agent_shape_mismatch():
    _raises(ValueError, "agent: expected shape (12,)", agent=np.zeros(5, int))


def test_test_kernel_shape_mismatch():
    _raises(ValueError, "kernel_test_train: expected shape", kernel_test_train=np.ones((4, 11)),
            y_test=np.eye(2)[[0, 1, 0, 1]])


def test_test_rows_disagreeing_name_both_arrays():
    """Rows of the test kernel and of y_test that disagree: it is not known which is wrong,
    so both are named (the kernel alone was blamed for a short y_test)."""
    _raises(ValueError, "kernel_test_train / y_test: expected the same test samples, got 4 "
            "rows of kernel_test_train and 3 rows of y_test",
            kernel_test_train=np.ones((4, 12)), y_test=np.eye(2)[[0, 1, 0]])


def test_non_symmetric_kernel():
    k = _args()["kernel_train"].copy()
    k[0, 1] += 1.0
    _raises(ValueError, "kernel_train: expected a symmetric matrix", kernel_train=k)


def test_bad_steps():
    _raises(ValueError, "steps: expected a non-decreasing sequence, got 5 then 3",
            steps=[0, 5, 3])
    _raises(ValueError, "steps: expected a horizon >= 0 (an integer T records steps 0..T)",
            steps=-5)
    _raises(ValueError, "steps: expected values >= 0", steps=[-1, 2])


def test_unknown_algorithm():
    _raises(ValueError, "algorithm: unknown algorithm 'gossip'", algorithm="gossip")


def test_problem_too_large_is_refused_before_allocating(monkeypatch):
    monkeypatch.setenv("NTKDYN_MEMORY_LIMIT", "1MB")
    data = nd.data.digits(n_train=600, n_test=200, seed=0)
    parts = nd.data.partition(data, agents=4, seed=0)
    w = nd.graphs.mixing(nd.graphs.topology("ring", 4))
    arch = nd.models.MLP(hidden=(64,), out=10)
    with pytest.raises(ProblemTooLargeError) as err:
        nd.build_problem(arch, parts, w)
    msg = str(err.value)
    assert "needs about" in msg and "available" in msg and "fewer training samples" in msg


def test_more_agents_than_samples():
    data = nd.data.digits(classes=[0, 1], n_train=5, n_test=4, seed=0)
    with pytest.raises(ValueError, match="agents"):
        nd.data.partition(data, agents=8)


def test_mixing_size_does_not_match_partition():
    data = nd.data.digits(n_train=100, n_test=20, seed=0)
    parts = nd.data.partition(data, agents=4, seed=0)
    with pytest.raises(ValueError, match=r"mixing: expected a \(4, 4\) matrix"):
        nd.build_problem(nd.models.MLP(hidden=(32,), out=10), parts,
                         nd.graphs.mixing(nd.graphs.topology("ring", 5)))


def test_architecture_outputs_do_not_match_classes():
    data = nd.data.digits(classes=[0, 1, 2], n_train=60, n_test=20, seed=0)
    parts = nd.data.partition(data, agents=3, seed=0)
    with pytest.raises(ValueError, match="arch.out"):
        nd.build_problem(nd.models.MLP(hidden=(32,), out=10), parts,
                         nd.graphs.mixing(nd.graphs.topology("ring", 3)))


# ------------------------------------------------- messages that name the culprit (issue 12)
def test_targets_with_wrong_rows_blame_y_train_not_the_kernel():
    msg = _raises(ValueError, "y_train: expected 12 rows", y_train=np.eye(2)[np.arange(11) % 2])
    assert "kernel_train: expected" not in msg and "got 11 rows" in msg


@pytest.mark.parametrize("lr", ["fast", None, [0.1, "x", 0.2]])
def test_learning_rate_of_the_wrong_type_names_lr(lr):
    msg = _raises(ValueError, "lr: expected a positive number or an array of 3 per-agent rates",
                  lr=lr)
    assert "could not convert" not in msg.split("(")[0]


def _small_problem():
    data = nd.data.digits(classes=[0, 1, 2], n_train=30, n_test=9, seed=0)
    return nd.data.partition(data, agents=3, seed=0), nd.graphs.mixing(
        nd.graphs.topology("ring", 3))


def test_architecture_given_as_a_string_names_arch():
    parts, w = _small_problem()
    with pytest.raises(ValueError, match=r"arch: expected an ntkdyn\.models\.MLP .* got str "
                                         r"'mlp'"):
        nd.predict("mlp", parts, w, 0.1, steps=5)


def test_empty_sweep_names_lrs():
    parts, w = _small_problem()
    with pytest.raises(ValueError, match="lrs: expected a non-empty sequence"):
        nd.predict_sweep(nd.models.MLP(hidden=(16,), out=3), parts, w, [], steps=5)
    args = _args()
    del args["lr"]
    with pytest.raises(ValueError, match="lrs: expected a non-empty sequence"):
        nd.sweep_from_kernels(lrs=[], **args)
    with pytest.raises(ValueError, match=r"lrs\[1\]: learning rates must be > 0"):
        nd.sweep_from_kernels(lrs=[0.1, -0.2], **args)


def test_adjacency_entries_must_be_zero_or_one(tmp_path):
    path = tmp_path / "adj.txt"
    path.write_text("0 2 1\n2 0 -1\n1 -1 0\n")  # today: silently three edges
    with pytest.raises(ValueError) as err:
        nd.graphs.load_adjacency(path)
    msg = str(err.value)
    assert str(path) in msg and "0/1 entries" in msg and "found 2 at (0, 1)" in msg


@pytest.mark.parametrize("suffix", [".txt", ".npy"])
@pytest.mark.parametrize("content", [b"hello world\nthis is text\n", b"\x89PNG\r\n\x1a\n\xff\xfe"])
def test_unreadable_adjacency_and_mixing_files_name_the_file(tmp_path, suffix, content):
    path = tmp_path / f"matrix{suffix}"
    path.write_bytes(content)
    for loader, what in ((nd.graphs.load_adjacency, "adjacency matrix"),
                         (nd.graphs.load_mixing, "mixing matrix")):
        with pytest.raises(ValueError) as err:
            loader(path)
        assert str(err.value).startswith(f"{path}: cannot read the {what}"), str(err.value)


@pytest.mark.parametrize("name, content", [("empty.txt", ""), ("comments.csv", "# no rows\n"),
                                           ("empty.npy", None)])
def test_empty_adjacency_and_mixing_files_are_one_error_without_numpy_warning(
        tmp_path, name, content):
    path = tmp_path / name
    if content is None:
        np.save(path, np.zeros((0, 0)))
    else:
        path.write_text(content)
    for loader, what in ((nd.graphs.load_adjacency, "adjacency matrix"),
                         (nd.graphs.load_mixing, "mixing matrix")):
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # numpy's "input contained no data" was printed
            with pytest.raises(ValueError) as err:
                loader(path)
        assert str(err.value).startswith(f"{path}: the {what} file holds no numbers"), \
            str(err.value)


def test_mixing_file_defect_names_the_file(tmp_path):
    path = tmp_path / "W.csv"
    path.write_text("0.5,0.6\n0.5,0.5\n")
    with pytest.raises(ValueError, match=rf"^{path}: mixing matrix must be row stochastic"):
        nd.graphs.load_mixing(path)


def test_mixing_for_more_agents_than_indexed_says_so():
    """A mixing matrix larger than the agents indexed: the error says both sizes (it named
    only an empty shard)."""
    msg = _raises(ValueError, "agent 3 has an empty shard",
                  mixing=nd.graphs.mixing(nd.graphs.topology("ring", 5)))
    assert "the 5x5 mixing matrix has 5 agents but the agent indices cover 0..2" in msg


@pytest.mark.parametrize("given, missing", [("f0_train", "f0_test"), ("f0_test", "f0_train")])
def test_one_of_f0_train_and_f0_test_is_refused_with_a_test_set(given, missing):
    """With a test set, f0_train alone (or f0_test alone) took the other as 0 (the mean
    network's): test loss 5x off, labelled as the given or the mean network.  Now an error
    naming the missing one; without a test set f0_train alone is one network."""
    rng = np.random.default_rng(1)
    x = rng.normal(size=(16, 4))
    kern = x @ x.T + np.eye(16)
    f0 = {"f0_train": rng.normal(size=(12, 2)), "f0_test": rng.normal(size=(4, 2))}
    _raises(ValueError, f"{missing}: expected the same network's outputs as {given}",
            kernel_train=kern[:12, :12], kernel_test_train=kern[12:, :12],
            y_test=np.eye(2)[np.arange(4) % 2], **{given: f0[given]})
    nd.predict_from_kernels(**{**_args(), "kernel_train": kern[:12, :12],
                               "f0_train": f0["f0_train"]})
    from ntkdyn import lowrank

    factor = lowrank.factorize(lowrank.kernel_columns(kern[:12, :12], kern[12:, :12]), 6)
    with pytest.raises(ValueError, match=f"^{missing}: expected the same network's"):
        lowrank.predict_lowrank(factor, _args()["y_train"], _args()["agent"], _args()["mixing"],
                                0.1, range(5), y_test=np.eye(2)[np.arange(4) % 2],
                                **{given: f0[given]})


def test_sweep_from_kernels_names_a_scalar_lrs_and_a_wrong_keyword():
    """A scalar lrs was "TypeError: 'float' object is not iterable"; a misspelt keyword was
    blamed on run_problem.  Now the error names lrs / the keyword, and nngp (one random
    network, as predict_from_kernels) is accepted."""
    args = _args()
    del args["lr"]
    with pytest.raises(ValueError, match="^lrs: expected a non-empty sequence"):
        nd.sweep_from_kernels(lrs=0.1, **args)
    with pytest.raises(TypeError, match="^sweep_from_kernels\\(\\) got an unexpected keyword "
                                        "argument 'sample'"):
        nd.sweep_from_kernels(lrs=[0.1], sample=3, **args)


def test_sweep_from_kernels_with_nngp_is_one_random_network_per_rate():
    """``nngp=`` in a sweep: rate i equals predict_from_kernels(lr=lrs[i], nngp=...) with the
    same seed and samples (same f_0 draws), expected losses and bands: to 1e-10 in float64;
    with the default kernel_dtype ("mixed": float32 response columns, grouped differently
    in a sweep) within its stated 1e-5 (measured 3e-9)."""
    rng = np.random.default_rng(2)
    x = rng.normal(size=(16, 4))
    pooled = x @ x.T / 4 + 0.1
    args = {**_args(), "kernel_train": pooled[:12, :12], "kernel_test_train": pooled[12:, :12],
            "y_test": np.eye(2)[np.arange(4) % 2], "nngp": pooled, "samples": 6, "seed": 3}
    del args["lr"]
    for dtype, rtol in (("float64", 1e-10), (None, 1e-5)):
        sweep = nd.sweep_from_kernels(lrs=[0.1, 0.3], kernel_dtype=dtype, **args)
        for lr, traj in zip([0.1, 0.3], sweep, strict=True):
            one = nd.predict_from_kernels(lr=lr, kernel_dtype=dtype, **args)
            assert traj.metadata["kernel_dtype"] == one.metadata["kernel_dtype"]
            for metric in ("train_loss", "test_loss"):
                np.testing.assert_allclose(getattr(traj, metric), getattr(one, metric),
                                           rtol=rtol, atol=0)
                np.testing.assert_allclose(traj.band(metric, 0.05, 0.95),
                                           one.band(metric, 0.05, 0.95), rtol=rtol, atol=0)
            assert type(traj) is type(one) and traj.samples == one.samples == 6


def test_loading_a_file_that_is_not_a_trajectory_names_path(tmp_path):
    """Trajectory.load on a foreign .npz was numpy's "KeyError: '__meta__ is not a file in
    the archive'", on a text file numpy's advice to load pickled data unsafely, on an .npy a
    TypeError; now one ValueError naming path and what it holds."""
    np.savez(tmp_path / "foreign.npz", a=np.ones(3))
    (tmp_path / "notes.txt").write_text("hello\n")
    np.save(tmp_path / "array.npy", np.ones(3))
    for name, why in [("foreign.npz", ""), ("notes.txt", ": not an .npz archive"),
                      ("array.npy", ": a single .npy array"), ("missing.npz", ": [Errno 2]")]:
        with pytest.raises(ValueError, match="^path: expected a trajectory written by "
                                             "Trajectory.save") as err:
            nd.Trajectory.load(tmp_path / name)
        assert str(err.value).startswith(
            f"path: expected a trajectory written by Trajectory.save (an .npz with its "
            f"metadata), got {str(tmp_path / name)!r}{why}"), str(err.value)
    traj = nd.predict_from_kernels(**_args())
    traj.save(tmp_path / "run.npz")
    np.testing.assert_array_equal(nd.Trajectory.load(tmp_path / "run.npz").train_loss,
                                  traj.train_loss)


def test_a_dataset_instead_of_a_partition_names_parts():
    """nd.predict with an unpartitioned Dataset was "AttributeError: 'Dataset' object has no
    attribute 'dataset'"; now every entry point names parts and how to split it."""
    parts, w = _small_problem()
    arch = nd.models.MLP(hidden=(16,), out=3)
    for call in (lambda: nd.predict(arch, parts.dataset, w, 0.1, steps=[0, 5]),
                 lambda: nd.predict_sweep(arch, parts.dataset, w, [0.1], steps=[0, 5]),
                 lambda: nd.build_problem(arch, parts.dataset, w)):
        with pytest.raises(ValueError, match=r"^parts: expected an ntkdyn.data.Partition .*"
                                             r"got Dataset: split the Dataset across the agents "
                                             r"first, nd.data.partition\(data, agents=Q\)"):
            call()


@pytest.mark.parametrize("seed", [None, "3", 1.5, -1])
def test_a_seed_that_is_not_a_nonnegative_integer_names_seed(seed):
    """seed=None was "TypeError: int() argument must be ... not 'NoneType'" from deep in
    random_init (after the kernel); now a ValueError naming seed before any kernel."""
    parts, w = _small_problem()
    arch = nd.models.MLP(hidden=(16,), out=3)
    args = _args()
    pooled = np.eye(12) + 0.1
    for call in (lambda: nd.predict(arch, parts, w, 0.1, steps=[0, 5], seed=seed),
                 lambda: nd.predict_sweep(arch, parts, w, [0.1], steps=[0, 5], seed=seed),
                 lambda: nd.build_problem(arch, parts, w, seed=seed),
                 lambda: nd.predict_from_kernels(**{**args, "kernel_train": pooled},
                                                 nngp=pooled, seed=seed),
                 lambda: nd.sweep_from_kernels(**{k: v for k, v in args.items() if k != "lr"},
                                               lrs=[0.1], seed=seed)):
        with pytest.raises(ValueError, match="^seed: expected an integer >= 0, got "):
            call()


def test_trajectory_views_name_an_unknown_metric_and_the_levels_given():
    """network_mean / final of an unknown metric were a bare AttributeError; band at levels
    that are not stored did not say which were given.  Now ValueErrors naming metric (with
    the metrics, a subclass's own included) and low/high (with the values)."""
    args = _args()
    pooled = np.eye(12) + 0.1
    traj = nd.predict_from_kernels(**{**args, "kernel_train": pooled}, nngp=pooled, samples=8)
    for view in (traj.network_mean, traj.final):
        with pytest.raises(ValueError, match=r"^metric: expected one of \['train_loss', .*"
                                             r"'exact_train_loss'.*\], got 'foo'"):
            view("foo")
        with pytest.raises(ValueError, match="^metric: 'test_loss' was not recorded"):
            view("test_loss")
    assert traj.network_mean("exact_train_loss").shape == (5,)
    with pytest.raises(ValueError, match=r"^low/high: expected levels among \[0.05, 0.25, "
                                         r"0.5, 0.75, 0.95\] .*got 0.1, 0.9$"):
        traj.band("train_loss", 0.1, 0.9)


def test_nngp_defects_are_named_as_they_are():
    """An nngp with a NaN said "expected a finite square matrix, got shape (16, 16)" (the
    shape was right); with a full kernel the error named f0.  Now: the non-finite entry,
    and kernel_train with the traced and full sizes; a NaN in a periodic sequence's matrix
    is named as a NaN too."""
    args = _args()
    pooled = np.eye(12) + 0.1
    bad = pooled.copy()
    bad[3, 4] = np.nan
    with pytest.raises(ValueError, match=r"^nngp: expected finite values, found nan at index "
                                         r"\(3, 4\)"):
        nd.predict_from_kernels(**{**args, "kernel_train": pooled}, nngp=bad)
    with pytest.raises(ValueError, match=r"^kernel_train: one random network \(nngp, "
                                         r"f0='random'\) with the squared loss needs the traced "
                                         r"kernel, one \(12, 12\) block shared by the 2 outputs, "
                                         r"got the full \(24, 24\) kernel"):
        nd.predict_from_kernels(**{**args, "kernel_train": np.kron(pooled, np.eye(2))},
                                nngp=pooled)
    w = nd.graphs.mixing(nd.graphs.topology("ring", 3))
    w_nan = w.copy()
    w_nan[0, 0] = np.nan
    with pytest.raises(ValueError, match=r"^matrices\[1\]: expected finite values, found nan"):
        nd.graphs.periodic([w, w_nan])


@pytest.mark.parametrize("loss", ["mse", "cross_entropy"])
def test_ragged_and_one_dimensional_targets_name_y_train(loss):
    """A ragged list of targets was numpy's 'inhomogeneous shape' error without a name; a
    1-D y with the squared loss now says how to make the one column."""
    ragged = [[1.0, 0.0]] * 11 + [[1.0]]
    _raises(ValueError, "y_train: expected a numeric array, got a ragged list (rows of "
            "different lengths)", y_train=ragged, loss=loss)
    if loss == "mse":
        _raises(ValueError, "y_train: expected a 2-D array, got shape (12,) (one column: "
                "y_train[:, None])", y_train=np.ones(12), loss=loss)


def test_settings_that_would_be_ignored_are_refused():
    """logit_scale with the squared loss, batch_sampling without batch_size and
    width_samples without width were ignored without a word (the TOML refuses the same
    keys); now each is a ValueError naming it."""
    _raises(ValueError, "logit_scale: only for loss='cross_entropy' (the logits s f), got "
            "logit_scale=5 with loss='mse'", logit_scale=5)
    _raises(ValueError, "batch_sampling: only used with mini-batch SGD (batch_size > 0), got "
            "batch_sampling='independent' with batch_size=0", batch_sampling="independent")
    nd.predict_from_kernels(**{**_args(), "y_train": np.arange(12) % 2}, logit_scale=5,
                            loss="cross_entropy")
    parts, w = _small_problem()
    arch = nd.models.MLP(hidden=(16,), out=3)
    for call in (lambda: nd.predict(arch, parts, w, 0.1, steps=[0, 5], width_samples=4),
                 lambda: nd.predict_sweep(arch, parts, w, [0.1], steps=[0, 5], width_samples=4)):
        with pytest.raises(ValueError, match="^width_samples: only used with width=n"):
            call()
    with pytest.raises(ValueError, match="^logit_scale: only for loss='cross_entropy'"):
        nd.predict(arch, parts, w, 0.1, steps=[0, 5], logit_scale=2.0, rank=4)


def test_a_divergent_random_network_prediction_is_a_verdict_without_numpy_warnings():
    """At lr = 50 one random network's exact expected losses overflowed past the divergence
    and numpy printed six RuntimeWarnings beside the verdict; now only the verdict, and the
    records (exact expected losses included) end finite before the divergence."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(16, 4))
    pooled = x @ x.T / 4 + 0.1
    args = {**_args(), "kernel_train": pooled[:12, :12], "kernel_test_train": pooled[12:, :12],
            "y_test": np.eye(2)[np.arange(4) % 2], "nngp": pooled, "samples": 8,
            "lr": 50.0, "steps": range(0, 201, 20)}
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        traj = nd.predict_from_kernels(**args)
    assert traj.status == "diverged"
    assert np.all(np.isfinite(traj.exact_test_loss)) and np.all(np.isfinite(traj.test_loss))


def test_low_rank_refusals_say_what_was_given():
    """traced=False with rank ran the traced kernel silently (0.5 % off the exact full-kernel
    path at rank = N); samples with f0='mean' blamed random sequences (which run on the
    low-rank path); a bad sweep rate was 'lr ... (agent 0)'; max_rank without rank did not
    show max_rank.  Each now names what was given, before any kernel."""
    parts, w = _small_problem()
    arch = nd.models.MLP(hidden=(16,), out=3)
    cases = [
        (dict(kernel="empirical", traced=False, rank=30), r"^rank: the low-rank path "
         r"factorises the traced empirical kernel .* traced=False .* runs on the exact path"),
        (dict(rank=8, f0="mean", samples=4), r"^rank: samples counts sampled random networks "
         r"\(f0='random'\) or sampled random mixing / mini-batch sequences, none of which"),
        (dict(max_rank=10), r"^tol / max_rank: .* got rank=None, tol=None and max_rank=10$"),
    ]
    for kw, match in cases:
        with pytest.raises(ValueError, match=match):
            nd.predict(arch, parts, w, 0.1, steps=[0, 5], **kw)
    with pytest.raises(ValueError, match=r"^lrs\[1\]: learning rates must be > 0, got -0.2$"):
        nd.predict_sweep(arch, parts, w, [0.1, -0.2], steps=[0, 5], f0="mean", rank=8)


def test_a_bad_rate_profile_names_profile():
    """A profile of the wrong length was numpy's broadcast error, an all-zero one a
    LinAlgError about infs or NaNs (stable_set and lowrank_stable_set alike)."""
    from ntkdyn import lowrank
    from ntkdyn.dynamics.stability import stable_set

    args = _args()
    problem = nd.make_problem(args["kernel_train"], args["y_train"], args["agent"],
                              args["mixing"])
    factor = lowrank.factorize(lowrank.kernel_columns(args["kernel_train"]), 6)
    for call in (lambda p: stable_set(problem, "dgd", p),
                 lambda p: lowrank.lowrank_stable_set(factor, args["agent"], args["mixing"],
                                                      "dgd", profile=p)):
        with pytest.raises(ValueError, match=r"^profile: expected a positive number or an "
                                             r"array of 3 per-agent rates, got shape \(2,\)"):
            call([1, 2])
        with pytest.raises(ValueError, match="^profile: learning rates must be > 0"):
            call([0, 0, 0])
