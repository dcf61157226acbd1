"""One random network where each sampled network needs columns of its own
(``ntkdyn.dynamics.random_init``, "Independent networks"): cross-entropy, random gossip,
mini-batch SGD.

Reference: for every sampled network ``s``, a separate ``predict_from_kernels`` run started
from that network's own ``f_0`` draw (``K`` draw columns ``s K .. s K + K - 1``) on the same
sequence ``s`` (``GossipTrajectory.sequence(s)`` of a run with the same ``samples`` and
``seed``), to 1e-10; the mean network against the plain ``f_0 = 0`` run.
"""


import numpy as np
import pytest
from conftest import rel_err

from ntkdyn import graphs
from ntkdyn.dynamics import random_init
from ntkdyn.dynamics.problem import make_problem
from ntkdyn.prediction import predict_from_kernels
from ntkdyn.trajectory import GossipTrajectory, RandomNetworkTrajectory

TOL = 1e-10
STEPS = [0, 3, 12]


@pytest.fixture(scope="module")
def small(golden_kernels):
    """12 train / 6 test, K = 3, 4 agents of 3 samples (sorted by agent, so the problem's
    order is the caller's), ring mixing, analytic kernels."""
    g = golden_kernels
    n = g["n"]
    ring = graphs.topology("ring", 4)
    return {**g,
            "agent": np.repeat(np.arange(4), n // 4), "W": graphs.mixing(ring),
            "random": graphs.random_edges(ring, p=0.5, seed=2)}


def _predict(p, mixing, **kw):
    return predict_from_kernels(p["k"], p["y"], p["agent"], mixing, 0.3, STEPS, "dgd",
                                kernel_test_train=p["kt"], y_test=p["y_test"], **kw)


CASES = {
    "cross_entropy": dict(mixing="W", kw={"loss": "cross_entropy"}, over="init"),
    "random_gossip": dict(mixing="random", kw={}, over="init+mixing"),
    "random_gossip_ce": dict(mixing="random", kw={"loss": "cross_entropy"},
                             over="init+mixing"),
    "sgd": dict(mixing="W", kw={"batch_size": 2}, over="init+batch"),
    "sgd_ce_random_gossip": dict(mixing="random",
                                 kw={"batch_size": 2, "loss": "cross_entropy",
                                     "batch_sampling": "independent"}, over="init+batch"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_each_network_is_the_prediction_from_its_own_f0_and_sequence(small, case):
    """Sampled network s = a separate prediction from its f_0 draw on sequence s (1e-10);
    the mean network = the plain f0 = 0 prediction (on the same sequences) (1e-10)."""
    spec = CASES[case]
    mixing, p, seed = small[spec["mixing"]], 3, 5
    traj = _predict(small, mixing, nngp=small["nngp"], samples=p, seed=seed, **spec["kw"])
    assert isinstance(traj, RandomNetworkTrajectory) and traj.samples == p
    assert traj.metadata["band_over"] == spec["over"]
    assert traj.metadata["band"] == random_init.BAND_WORDS[spec["over"]]
    problem = make_problem(small["k"], small["y"], small["agent"], mixing,
                           kernel_test_train=small["kt"], y_test=small["y_test"])
    draws = random_init.draw(random_init.sorted_nngp(problem, small["nngp"]), small["n"], p,
                             seed, outputs=3)
    sequences = spec["over"] != "init"
    for s in range(p):
        f0_train, f0_test = draws.network_f0(s)
        single = _predict(small, mixing, f0_train=f0_train, f0_test=f0_test, seed=seed,
                          samples=p if sequences else None, **spec["kw"])
        if sequences:
            single = single.sequence(s)
        for metric in random_init.DRAW_METRICS:
            assert rel_err(traj.draws[metric][s], getattr(single, metric)) < TOL, metric
    plain = _predict(small, mixing, seed=seed, samples=p if sequences else None,
                     **spec["kw"])
    for metric in ("train_loss", "test_loss", "test_acc", "param_dist"):
        assert rel_err(getattr(traj.mean_network, metric), getattr(plain, metric)) < TOL
    assert len(set(np.round(traj.draws["test_loss"][:, -1, 0], 8))) == p  # distinct networks
    # bands: (5 levels, T, Q), the mean inside the outer band
    assert traj.quantiles["test_loss"].shape == (5, len(STEPS), 4)
    lo, hi = traj.band("test_loss", 0.05, 0.95)
    assert np.all(lo <= traj.test_loss + 1e-12) and np.all(traj.test_loss <= hi + 1e-12)


@pytest.mark.parametrize("case", ["random_gossip", "sgd", "random_gossip_ce",
                                  "sgd_ce_random_gossip"])
def test_init_and_sequence_bands_are_kept_apart(small, case):
    """With sequences the networks' band is joint (init and sequence); over='sequence' is
    the mean network's band over the sequences alone; over='init' is the band over
    initialisations alone (the expected dynamics from each f0) for the squared loss, and
    refused for cross-entropy (changed with issue 14: it was refused for every loss)."""
    spec = CASES[case]
    traj = _predict(small, small[spec["mixing"]], nngp=small["nngp"], samples=4, seed=1,
                    **spec["kw"])
    assert isinstance(traj.mean_network, GossipTrajectory)
    lo, hi = traj.band("test_loss", 0.05, 0.95, over="sequence")
    mlo, mhi = traj.mean_network.band("test_loss", 0.05, 0.95)
    assert np.array_equal(lo, mlo) and np.array_equal(hi, mhi)
    if "_ce" in case:
        assert traj.init_band_run is None and "init_band" not in traj.metadata
        with pytest.raises(ValueError, match="over: .*jointly.*squared loss"):
            traj.band("test_loss", 0.05, 0.95, over="init")
    else:
        ilo, ihi = traj.band("test_loss", 0.05, 0.95, over="init")
        rlo, rhi = traj.init_band_run.band("test_loss", 0.05, 0.95)
        assert np.array_equal(ilo, rlo) and np.array_equal(ihi, rhi)
        assert not np.allclose(ilo, lo)  # a different band from the sequences'
        kind = "batch" if "batch_size" in spec["kw"] else "mixing"
        assert traj.metadata["init_band"] == random_init.INIT_BAND_WORDS[kind]
        assert traj.init_band_run.metadata["band_over"] == "init"
    # the expected group of the mean network: E[W] / full batch from f0 = 0
    assert traj.mean_network.expected is not None


@pytest.mark.parametrize("case", ["random_gossip", "sgd", "sgd_independent"])
def test_init_band_samples_are_the_expected_dynamics_from_each_f0(small, case, tmp_path):
    """The band over initialisations alone: its sample s equals a separate full-batch
    (mini-batch SGD) or E[W] (random gossip) prediction from network s's own f0 draw, to
    1e-10; its mean network equals the plain f0 = 0 expected run; it survives save/load."""
    from ntkdyn.trajectory import Trajectory

    kw = {"sgd": {"batch_size": 2}, "random_gossip": {},
          "sgd_independent": {"batch_size": 2, "batch_sampling": "independent"}}[case]
    mixing = small["random" if case == "random_gossip" else "W"]
    p, seed = 3, 5
    traj = _predict(small, mixing, nngp=small["nngp"], samples=p, seed=seed, **kw)
    problem = make_problem(small["k"], small["y"], small["agent"], small["W"],
                           kernel_test_train=small["kt"], y_test=small["y_test"])
    draws = random_init.draw(random_init.sorted_nngp(problem, small["nngp"]), small["n"], p,
                             seed, outputs=3)
    expected_mixing = mixing.expected() if case == "random_gossip" else mixing
    run = traj.init_band_run
    assert isinstance(run, RandomNetworkTrajectory) and run.samples == p
    for s in range(p):
        f0_train, f0_test = draws.network_f0(s)
        single = _predict(small, expected_mixing, f0_train=f0_train, f0_test=f0_test)
        for metric in random_init.DRAW_METRICS:
            assert rel_err(run.draws[metric][s], getattr(single, metric)) < TOL, metric
    plain = _predict(small, expected_mixing)
    assert rel_err(run.mean_network.test_loss, plain.test_loss) < TOL
    assert rel_err(run.mean_network.test_loss, traj.mean_network.expected.test_loss) < TOL
    back = Trajectory.load(traj.save(tmp_path / "t.npz"))
    assert np.array_equal(back.band("test_loss", over="init")[1],
                          traj.band("test_loss", over="init")[1])
    assert np.array_equal(back.init_band_run.draws["test_loss"], run.draws["test_loss"])


def test_cross_entropy_mean_network_is_named_for_what_it_is(small):
    traj = _predict(small, small["W"], nngp=small["nngp"], samples=3, loss="cross_entropy")
    assert "not the expected network" in traj.metadata["mean_network"]
    assert "not the expected network" in traj.mean_network.metadata["quantity"]
    assert traj.metadata["quantity"].startswith("one random network")
    assert traj.metadata["quantity"].endswith(
        ".mean_network is the network from f0 = 0 (cross-entropy: not the mean network)")
    assert traj.band("test_loss", 0.05, 0.95, over="init")[0].shape == (len(STEPS), 4)


def test_cross_entropy_flow_with_random_networks(small):
    """The adaptive cross-entropy flow carries the networks' groups too: network s = the
    flow from its own f_0 (to the flow's tolerance, both runs at rtol 1e-6 differ by
    their step control only, so 1e-5 relative)."""
    traj = _predict(small, small["W"], nngp=small["nngp"], samples=2, loss="cross_entropy",
                    continuous=True, seed=3)
    problem = make_problem(small["k"], small["y"], small["agent"], small["W"],
                           kernel_test_train=small["kt"], y_test=small["y_test"])
    draws = random_init.draw(random_init.sorted_nngp(problem, small["nngp"]), small["n"], 2,
                             3, outputs=3)
    f0_train, f0_test = draws.network_f0(1)
    single = _predict(small, small["W"], f0_train=f0_train, f0_test=f0_test,
                      loss="cross_entropy", continuous=True)
    assert rel_err(traj.draws["test_loss"][1], single.test_loss) < 1e-5


@pytest.mark.parametrize("change, match", [
    ({"loss": "cross_entropy", "kernel_dtype": "mixed"}, "kernel_dtype"),
    ({"batch_size": 2, "devices": "cpu"}, "devices"),
])
def test_invalid_independent_network_calls_name_the_argument(small, change, match):
    import jax

    if change.get("devices") == "cpu":
        change["devices"] = jax.devices("cpu")[:1]
    with pytest.raises(ValueError, match=match):
        _predict(small, small["W"], nngp=small["nngp"], samples=3, **change)


def test_predict_defaults_to_one_random_network_everywhere():
    """nd.predict's default f0 is one random network with cross-entropy, random gossip and
    mini-batch SGD (the analytic kernel), and on the low-rank path (f0 drawn from a
    low-rank NNGP factor, ntkdyn.lowrank.networks)."""
    import ntkdyn as nd

    data = nd.data.digits(n_train=24, n_test=12, seed=0, classes=[0, 1, 2])
    parts = nd.data.partition(data, agents=3, scheme="iid", seed=0)
    ring = nd.graphs.topology("ring", 3)
    arch = nd.models.MLP(hidden=(32,), out=3)
    for kw in ({"loss": "cross_entropy"}, {"batch_size": 4, "samples": 3},
               {"mixing": nd.graphs.random_edges(ring, p=0.5, seed=0), "samples": 3}):
        mixing = kw.pop("mixing", nd.graphs.mixing(ring))
        traj = nd.predict(arch, parts, mixing, 0.3, steps=range(0, 9, 4), **kw)
        assert isinstance(traj, RandomNetworkTrajectory), kw
        assert traj.metadata["f0"] == "random"
        assert traj.metadata["quantity"].startswith("one random network")
    low = nd.predict(arch, parts, nd.graphs.mixing(ring), 0.3, steps=4, f0="random", rank=8,
                     samples=4)
    assert isinstance(low, RandomNetworkTrajectory) and low.samples == 4
    assert low.metadata["low_rank"]["f0_draws"]["nngp_rank"] == 8


def test_predict_command_cross_entropy_one_random_network(tmp_path):
    """`ntkdyn predict` on a small cross-entropy config: one random network by default (its
    summary says so), kernel_dtype from [prediction]; a finite-width band works with it."""
    import json

    from conftest import TINY_TOML

    from ntkdyn import Trajectory
    from ntkdyn.cli import main

    cfg = tmp_path / "ce.toml"
    cfg.write_text(TINY_TOML.replace("steps = 40", "steps = 20")
                   + 'loss = "cross_entropy"\n[prediction]\nsamples = 3\n'
                   'kernel_dtype = "float32"\nwidth = 64\nwidth_samples = 2\n')
    out = tmp_path / "out"
    assert main(["predict", str(cfg), "--out", str(out), "--quiet"]) == 0
    traj = Trajectory.load(out / "trajectory.npz")
    assert isinstance(traj, RandomNetworkTrajectory) and traj.samples == 3
    assert traj.metadata["kernel_dtype"] == "float32" and traj.metadata["loss"] == \
        "cross_entropy"
    assert traj.width_draws["test_loss"].shape[0] == 2
    summary = json.loads((out / "summary.json").read_text())
    assert summary["describes"].startswith("one random network")


@pytest.mark.parametrize("prediction, training, needle", [
    ({"kernel_dtype": "float16"}, {}, "prediction.kernel_dtype: expected one of"),
    ({"kernel_dtype": "mixed"}, {"loss": "cross_entropy"}, "prediction.kernel_dtype: 'mixed'"),
    ({"kernel_dtype": "mixed", "f0": "mean"}, {}, "prediction.kernel_dtype: 'mixed'"),
    ({"kernel_dtype": "float32", "rank": 8}, {}, "prediction.kernel_dtype: 'float32'"),
])
def test_kernel_dtype_config_errors_name_the_key(prediction, training, needle):
    from ntkdyn.config.schema import ConfigError, config_from_dict

    raw = {"data": {"source": "digits", "n_train": 60, "n_test": 30},
           "prediction": prediction, "training": {"lr": 0.3, "steps": 10, **training}}
    with pytest.raises(ConfigError, match=needle):
        config_from_dict(raw)
    ok = dict(prediction, kernel_dtype="float64")
    assert config_from_dict(dict(raw, prediction=ok)).prediction.kernel_dtype == "float64"


@pytest.mark.parametrize("dtype, expected", [("", "mixed"), ("float64", "float64")])
def test_predict_command_empty_kernel_dtype_is_the_library_default(tmp_path, dtype, expected):
    """``[prediction] kernel_dtype = ""`` (or absent) is the library default: ``"mixed"`` for
    one random network with the squared loss on a static ring; an explicit value is kept."""
    from conftest import TINY_TOML

    from ntkdyn import Trajectory
    from ntkdyn.cli import main

    cfg = tmp_path / "mse.toml"
    cfg.write_text(TINY_TOML.replace("steps = 40", "steps = 10")
                   + f'[prediction]\nsamples = 4\nkernel_dtype = "{dtype}"\n')
    out = tmp_path / "out"
    assert main(["predict", str(cfg), "--out", str(out), "--quiet"]) == 0
    traj = Trajectory.load(out / "trajectory.npz")
    assert isinstance(traj, RandomNetworkTrajectory)
    assert traj.metadata["kernel_dtype"] == expected


def test_plot_draws_init_and_sequence_bands_apart(small, tmp_path):
    """Mini-batch SGD, one random network: the figure labels the per-agent band as joint and
    draws the network mean's band over initialisations alone and over the sequences alone as
    two separate, labelled bands."""
    from ntkdyn.plotting import plot_trajectory, pyplot

    traj = _predict(small, small["W"], nngp=small["nngp"], samples=4, seed=1, batch_size=2)
    fig = plot_trajectory(traj)
    labels = fig.legends[0].get_texts()
    words = [" ".join(t.get_text().split()) for t in labels]  # labels may be wrapped
    assert any("initialisations and mini-batch sequences jointly" in w for w in words)
    assert any("over 4 initialisations alone" in w for w in words)
    assert any("over 4 mini-batch sequences alone" in w for w in words)
    fig.savefig(tmp_path / "bands.png")
    pyplot().close(fig)
    assert (tmp_path / "bands.png").stat().st_size > 0


@pytest.mark.parametrize("case", ["random_gossip", "sgd"])
def test_without_the_init_band_the_rest_is_unchanged(small, case):
    """``run_problem(..., init_band=False)`` (what ``ntkdyn check`` runs: it reports the
    joint band only) leaves out the ``S`` expected runs from each network's ``f_0``: no
    ``.init_band_run``, and every other number equal to the full run's to 1e-12."""
    from ntkdyn.dynamics.run import run_problem

    kw = {"sgd": {"batch_size": 2}, "random_gossip": {}}[case]
    mixing = small["random" if case == "random_gossip" else "W"]
    problem = make_problem(small["k"], small["y"], small["agent"], mixing,
                           kernel_test_train=small["kt"], y_test=small["y_test"])
    init = random_init.draw(random_init.sorted_nngp(problem, small["nngp"]), small["n"], 3, 5,
                            outputs=3)
    full, lean = (run_problem(problem, "dgd", [0.3], STEPS, init=init, samples=3, seed=5,
                              init_band=band, **kw)[0] for band in (True, False))
    assert full.init_band_run is not None and lean.init_band_run is None
    assert "init_band" not in lean.metadata
    for metric in random_init.DRAW_METRICS:
        assert rel_err(lean.draws[metric], full.draws[metric]) < 1e-12, metric
        assert rel_err(getattr(lean.mean_network, metric),
                       getattr(full.mean_network, metric)) < 1e-12, metric
        assert np.array_equal(lean.band(metric)[1], full.band(metric)[1]) or \
            rel_err(lean.band(metric)[1], full.band(metric)[1]) < 1e-12
    with pytest.raises(ValueError, match="over"):
        lean.band("test_loss", over="init")
