"""Configuration parsing and the command line."""

import json

import numpy as np
import pytest
from conftest import TINY_TOML as TINY

from ntkdyn import Trajectory
from ntkdyn.cli import main
from ntkdyn.config.schema import ConfigError, config_from_dict, load_config


def test_default_example_parses():
    cfg = load_config("examples/default.toml")
    assert cfg.training.algorithm == "dgd" and cfg.partition.agents == 8
    assert cfg.steps[0] == 0 and cfg.steps[-1] == cfg.training.steps


@pytest.mark.parametrize("raw, needle", [
    ({"training": {"lrr": 0.1}}, "unknown key 'training.lrr'"),
    ({"trainin": {}}, "unknown key 'trainin'"),
    ({"training": {"lr": "fast"}}, "training.lr: expected a number, got str 'fast'"),
    ({"training": {"steps": 1.5}}, "training.steps: expected an integer"),
    ({"data": {"classes": [0, "a"]}}, "data.classes[1]: expected an integer"),
    ({"training": {"lr": -0.1}}, "training.lr: expected a value > 0"),
    ({"training": {"algorithm": "sgd"}}, "training.algorithm: expected one of"),
    ({"data": {"source": "mnist"}}, "data.path: required"),
    ({"data": {"standardise": 1}}, "data.standardise: expected true or false"),
    ({"topology": {"name": "hexagon"}}, "topology.name: expected one of ['ring', 'path'"),
    ({"topology": {"sequence": ["ring", "hexagon"]}},
     "topology.sequence[1]: expected one of ['ring'"),
    ({"topology": {"sequence": []}}, "topology.sequence: expected at least one topology"),
    ({"architecture": {"activation": "relux"}},
     "architecture.activation: expected one of ['relu', 'leaky_relu'"),
    ({"training": {"steps": 2000, "record_every": 5000}},
     "training.record_every: expected at most training.steps = 2000"),
    ({"data": {"classes": [3]}}, "data.classes: expected at least 2 distinct labels"),
    ({"data": {"classes": [3, 3], "source": "synthetic"}},
     "data.classes: expected at least 2 distinct labels"),
    # it was scikit-learn's message, blamed on data.source
    ({"seed": 2**32}, "config: seed: expected an integer in [0, 4294967295], got 4294967296"),
    ({"prediction": {"kernel": "empirical", "f0": "random"}},
     "config: prediction.f0: 'random' (one random network over initialisations) cannot be "
     "combined with prediction.kernel = 'empirical'"),
])
def test_bad_config_names_the_key(raw, needle):
    with pytest.raises(ConfigError) as err:
        config_from_dict(raw)
    assert needle in str(err.value)


def test_default_record_every_above_few_steps_is_not_an_error():
    """``record_every`` is checked against ``steps`` only when given: the default (20) with
    10 steps records steps 0 and 10."""
    cfg = config_from_dict({"training": {"steps": 10}})
    assert list(cfg.steps) == [0, 10]


def test_predict_command_writes_outputs(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text(TINY)
    out = tmp_path / "out"
    assert main(["predict", str(cfg), "--out", str(out), "--quiet"]) == 0
    traj = Trajectory.load(out / "trajectory.npz")
    assert traj.train_loss.shape == (5, 3)
    assert np.all(np.diff(traj.network_mean("train_loss")) < 0)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "ok" and summary["config"]["seed"] == 1
    # the default run is one random network: its mean network's test loss and accuracy
    assert summary["final_test_acc_mean_network"] == pytest.approx(
        traj.mean_network.network_mean("test_acc")[-1], abs=1e-12)
    assert summary["final_test_loss_mean_network"] == pytest.approx(
        traj.mean_network.network_mean("test_loss")[-1], rel=1e-12)
    assert summary["mean_network_is"] == "mean network (f0 = 0)"
    # a stable run without an exact analysis says so instead of null
    assert summary["stability"].startswith("not computed for this run")
    assert (out / "trajectory.png").stat().st_size > 10_000
    assert traj.metadata["config"]["training"]["lr"] == 0.3


def test_predict_command_bad_input_exit_2_and_nothing_written(tmp_path, capsys):
    cfg = tmp_path / "c.toml"
    cfg.write_text(TINY.replace("lr = 0.3", "lr = 0.0"))
    out = tmp_path / "out"
    assert main(["predict", str(cfg), "--out", str(out), "--quiet"]) == 2
    assert "training.lr" in capsys.readouterr().err
    assert not out.exists()
    assert not list(tmp_path.glob(".out.partial*"))


def test_mixing_file_refuses_the_keys_it_would_ignore(tmp_path, capsys):
    """lazy = true, another rule or params with a mixing_file were dropped without a word
    (the same run as the plain file); now one error naming them all, before any kernel.
    name (overridden: the report names the file) and the default rule stay accepted."""
    np.savetxt(tmp_path / "W.txt", np.full((3, 3), 1 / 3))
    cfg = tmp_path / "c.toml"
    base = TINY.replace('name = "ring"', 'name = "ring"\nmixing_file = "W.txt"')
    cfg.write_text(base.replace('[topology]', '[topology]\nlazy = true\nrule = "max_degree"'))
    with pytest.raises(ConfigError, match=r"^config: topology.mixing_file: the matrix is used "
                                          r"as given, so topology.lazy, topology.rule would "
                                          r"not apply; remove them"):
        load_config(cfg)
    cfg.write_text(base.replace('[topology]', '[topology]\nrule = "metropolis"'))
    assert load_config(cfg).topology.mixing_file == str(tmp_path / "W.txt")


def test_mixing_file_must_be_stochastic_and_connected(tmp_path, capsys):
    bad = tmp_path / "W.txt"
    np.savetxt(bad, np.array([[0.5, 0.5, 0], [0.5, 0.5, 0], [0, 0, 1.0]]))
    cfg = tmp_path / "c.toml"
    cfg.write_text(TINY.replace('name = "ring"', 'name = "ring"\nmixing_file = "W.txt"'))
    assert main(["predict", str(cfg), "--out", str(tmp_path / "o"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "topology.mixing_file" in err and "connected" in err
    np.savetxt(bad, np.array([[0.5, 0.6, 0], [0.5, 0.5, 0], [0, 0.5, 0.5]]))
    assert main(["predict", str(cfg), "--out", str(tmp_path / "o"), "--quiet"]) == 2
    assert "row" in capsys.readouterr().err


# ------------------------------------------------- errors name the key or file (issue 12)
@pytest.mark.parametrize("raw, needle", [
    ({"training": {"lr": float("inf")}},
     "config: training.lr: expected a finite positive number, got inf"),
    ({"training": {"lr": float("nan")}}, "config: training.lr: expected a finite positive"),
    ({"architecture": {"W_std": float("inf")}}, "config: architecture.W_std: expected a finite"),
    ({"topology": {"name": "erdos_renyi", "params": {"p": float("nan")}}},
     "config: topology.params.p: expected a finite number"),
])
def test_non_finite_numbers_name_the_key(raw, needle):
    with pytest.raises(ConfigError) as err:
        config_from_dict(raw)
    assert needle in str(err.value)


def test_binary_config_names_the_file(tmp_path):
    path = tmp_path / "c.toml"
    path.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00")
    with pytest.raises(ConfigError, match=rf"config: {path} is not a TOML text file"):
        load_config(path)


def _run_cli(tmp_path, capsys, text):
    cfg = tmp_path / "c.toml"
    cfg.write_text(text)
    out = tmp_path / "out"
    code = main(["predict", str(cfg), "--out", str(out), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and not out.exists(), err
    return err


@pytest.mark.parametrize("change, needle", [
    (("n_train = 60", "n_train = 5000"), "config: data.n_train: n_train + n_test"),
    (("agents = 3", "agents = 80"), "config: partition.agents: cannot give 80 agents"),
    # digits' split is stratified: fewer samples than classes was scikit-learn's message
    # under "data.source"
    (("n_test = 30", "n_test = 2"), "config: data.n_test: n_test = 2: the split is stratified"),
])
def test_data_layer_errors_carry_the_key_path(tmp_path, capsys, change, needle):
    assert needle in _run_cli(tmp_path, capsys, TINY.replace(*change))


def test_adjacency_file_with_other_entries_is_refused_naming_it(tmp_path, capsys):
    (tmp_path / "A.txt").write_text("0 2 -1\n2 0 1\n-1 1 0\n")
    err = _run_cli(tmp_path, capsys, TINY.replace('name = "ring"', 'name = "file"\n'
                                                  'adjacency_file = "A.txt"'))
    assert "config: topology.adjacency_file" in err and str(tmp_path / "A.txt") in err
    assert "0/1 entries" in err


def test_topology_and_data_path_defects_name_their_key(tmp_path, capsys):
    """Each names the key that gave it: a bad params entry (it said 'config: topology:'), a
    disconnected adjacency_file (no key and no file before), a folder given as the
    adjacency file (it said 'file not found'), a file given as the data folder."""
    ring = 'name = "ring"'
    err = _run_cli(tmp_path, capsys, TINY.replace(ring, ring + "\nparams = { p = 0.4 }"))
    assert "config: topology.params: topology 'ring' got unknown parameter(s) 'p'" in err
    err = _run_cli(tmp_path, capsys, TINY.replace(ring, 'name = "erdos_renyi"\n'
                                                  'params = { p = 1.5 }'))
    assert "config: topology.params: topology 'erdos_renyi': parameter 'p' must lie" in err
    np.savetxt(tmp_path / "A.txt", np.array([[0, 1, 0], [1, 0, 0], [0, 0, 0]]), fmt="%d")
    err = _run_cli(tmp_path, capsys, TINY.replace(ring, 'name = "file"\n'
                                                  'adjacency_file = "A.txt"'))
    assert f"config: topology.adjacency_file: {tmp_path / 'A.txt'}: topology must be " \
           "connected" in err
    (tmp_path / "folder").mkdir()
    err = _run_cli(tmp_path, capsys, TINY.replace(ring, 'name = "file"\n'
                                                  'adjacency_file = "folder"'))
    assert f"{tmp_path / 'folder'}: a folder, not the adjacency matrix file" in err
    (tmp_path / "notes.txt").write_text("x")
    err = _run_cli(tmp_path, capsys, TINY.replace('source = "digits"', 'source = "mnist"\n'
                                                  'path = "notes.txt"'))
    assert f"config: data.path: {tmp_path / 'notes.txt'} is a file, not the folder " \
           "holding train-images-idx3-ubyte" in err


@pytest.mark.parametrize("key", ["adjacency_file", "mixing_file"])
def test_text_adjacency_or_mixing_file_names_the_file(tmp_path, capsys, key):
    (tmp_path / "M.txt").write_text("a b c\nd e f\n")
    name = 'name = "file"\n' if key == "adjacency_file" else 'name = "ring"\n'
    err = _run_cli(tmp_path, capsys, TINY.replace('name = "ring"', f'{name}{key} = "M.txt"'))
    assert f"config: topology.{key}: {tmp_path / 'M.txt'}: cannot read" in err


@pytest.mark.parametrize("training, needle", [
    ({"loss": "hinge"},
     "config: training.loss: expected one of ['mse', 'cross_entropy'], got 'hinge'"),
    ({"loss": "cross_entropy", "logit_scale": 0.0},
     "config: training.logit_scale: expected a value > 0, got 0.0"),
    ({"loss": "cross_entropy", "logit_scale": -2},
     "config: training.logit_scale: expected a value > 0, got -2.0"),
    ({"loss": "cross_entropy", "logit_scale": float("inf")},
     "config: training.logit_scale: expected a finite positive number"),
    ({"logit_scale": 2.0},
     "config: training.logit_scale: only used with training.loss = 'cross_entropy', got "
     "training.loss = 'mse'"),
])
def test_loss_config_errors_name_the_key(training, needle):
    with pytest.raises(ConfigError) as err:
        config_from_dict({"training": training})
    assert needle in str(err.value)


def test_cross_entropy_with_centred_targets_is_refused_naming_the_key():
    with pytest.raises(ConfigError, match=r"^config: data.centre_targets: training.loss = "
                                          r"'cross_entropy' needs one-hot targets"):
        config_from_dict({"training": {"loss": "cross_entropy"},
                          "data": {"centre_targets": True}})


def test_loss_keys_parse_and_logit_scale_is_listed_only_with_cross_entropy():
    from ntkdyn.config.experiment import loss_of
    from ntkdyn.config.schema import applicable

    mse = config_from_dict({})
    assert mse.training.loss == "mse" and loss_of(mse) == {"loss": "mse"}
    assert "logit_scale" not in applicable(mse)["training"]
    ce = config_from_dict({"training": {"loss": "cross_entropy", "logit_scale": 2}})
    assert loss_of(ce) == {"loss": "cross_entropy", "logit_scale": 2.0}
    assert applicable(ce)["training"]["logit_scale"] == 2.0


CE_TINY = TINY.replace("steps = 40", 'steps = 40\nloss = "cross_entropy"\nlogit_scale = 2.0')


def test_predict_command_with_cross_entropy(tmp_path):
    """End to end: the TOML's loss reaches the prediction (metadata, summary, losses)."""
    cfg = tmp_path / "ce.toml"
    cfg.write_text(CE_TINY)
    out = tmp_path / "out"
    assert main(["predict", str(cfg), "--out", str(out), "--quiet"]) == 0
    traj = Trajectory.load(out / "trajectory.npz")
    assert traj.metadata["loss"] == "cross_entropy"
    assert traj.metadata["config"]["training"]["loss"] == "cross_entropy"
    assert "softmax curvature" in traj.metadata["stability"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["loss"] == "cross_entropy" and summary["status"] == "ok"
    assert summary["mean_network_is"] == ("network from f0 = 0 (cross-entropy: not the mean "
                                          "network)")
    # the default is now one random network: its mean network (f0 = 0) starts at the
    # cross-entropy of softmax(2 f) near f = 0, about log K = log 3, decreasing; the expected
    # loss over initialisations starts above it (CE is convex in f: Jensen) and decreases
    assert traj.metadata["quantity"].startswith("one random network")
    mean = traj.mean_network.network_mean("train_loss")
    assert abs(mean[0] - np.log(3)) < 0.5 and np.all(np.diff(mean) < 0)
    expected = traj.network_mean("train_loss")
    assert expected[0] > mean[0] and np.all(np.diff(expected) < 0)
    mse_out = tmp_path / "mse"
    (tmp_path / "mse.toml").write_text(TINY)
    assert main(["predict", str(tmp_path / "mse.toml"), "--out", str(mse_out), "--quiet"]) == 0
    mse = Trajectory.load(mse_out / "trajectory.npz")
    assert mse.metadata["loss"] == "mse"
    assert np.max(np.abs(mse.train_loss - traj.train_loss)) > 1e-2


def test_predict_command_with_cross_entropy_flow(tmp_path):
    """training.continuous = true with cross-entropy: the adaptive flow, solver in metadata."""
    cfg = tmp_path / "ce_flow.toml"
    cfg.write_text(CE_TINY.replace("steps = 40", "steps = 40\ncontinuous = true"))
    out = tmp_path / "out"
    assert main(["predict", str(cfg), "--out", str(out), "--quiet"]) == 0
    traj = Trajectory.load(out / "trajectory.npz")
    assert traj.continuous and traj.status == "ok"
    assert traj.metadata["flow"]["solver"] == "diffrax.Tsit5"
    assert traj.metadata["flow"]["result"] == "successful"
    mean = traj.network_mean("train_loss")
    assert np.all(np.diff(mean) < 0)


def test_check_command_takes_cross_entropy(tmp_path, capsys):
    """check now analyses cross-entropy (it refused it before issue 15's check part): the
    verdicts are of the linearisation at f_0; --measure-edge (squared-loss training) is a
    clear error naming training.loss."""
    cfg = tmp_path / "ce.toml"
    cfg.write_text(CE_TINY)
    assert main(["check", str(cfg), "--quiet"]) in (0, 1)
    out = capsys.readouterr().out
    assert "Cross-entropy: linearised at f_0 = 0" in out
    assert main(["check", str(cfg), "--quiet", "--measure-edge"]) == 2
    assert "config: training.loss: --measure-edge trains the real network with the squared " \
           "loss" in capsys.readouterr().err


def test_config_path_that_is_missing_or_a_directory(tmp_path):
    with pytest.raises(ConfigError, match="config: file not found: "):
        load_config(tmp_path / "absent.toml")
    with pytest.raises(ConfigError, match="is a directory; expected a TOML file"):
        load_config(tmp_path)


def test_whole_number_topology_parameters_stay_integers():
    """``params = { k = 2 }`` is the integer 2 (it was stored as 2.0 and refused as "not an
    integer"); a bool is refused naming the key; ``training = 3`` names ``training``."""
    import networkx as nx

    from ntkdyn import graphs
    from ntkdyn.config.experiment import build_mixing

    cfg = config_from_dict({"partition": {"agents": 4},
                            "topology": {"name": "small_world", "params": {"k": 2}}})
    assert cfg.topology.params == {"k": 2} and isinstance(cfg.topology.params["k"], int)
    graph, _ = build_mixing(cfg)
    assert nx.is_isomorphic(graph, graphs.topology("small_world", 4, k=2, seed=0))
    torus = config_from_dict({"partition": {"agents": 8},
                              "topology": {"name": "torus", "params": {"rows": 2}}})
    assert build_mixing(torus)[0].number_of_nodes() == 8
    with pytest.raises(ConfigError, match=r"topology\.params\.k: expected an integer or a number"):
        config_from_dict({"topology": {"name": "small_world", "params": {"k": True}}})
    with pytest.raises(ConfigError, match=r"config: training: expected a table, got int"):
        config_from_dict({"training": 3})


def test_topology_params_reach_the_topologies_of_a_sequence():
    """With ``topology.sequence`` each topology gets the parameters it takes (they were
    dropped silently): the Erdos-Renyi matrix of the cycle is the one with the configured
    ``p``; an invalid value names its place in the sequence, a parameter that no topology
    of the sequence takes names ``topology.params``."""
    from ntkdyn import graphs
    from ntkdyn.config.experiment import build_mixing

    raw = {"partition": {"agents": 12},
           "topology": {"sequence": ["ring", "erdos_renyi"], "params": {"p": 0.5}}}
    _, process = build_mixing(config_from_dict(raw))
    expected = graphs.mixing(graphs.topology("erdos_renyi", 12, p=0.5, seed=0), "metropolis")
    np.testing.assert_array_equal(process.cycle[1], expected)
    default = graphs.mixing(graphs.topology("erdos_renyi", 12, seed=0), "metropolis")
    assert not np.array_equal(process.cycle[1], default)
    raw["topology"]["params"] = {"p": 5.0}
    with pytest.raises(ConfigError, match=r"topology\.sequence\[1\]: .*'p' must lie in"):
        build_mixing(config_from_dict(raw))
    raw["topology"]["params"] = {"radius": 0.3}
    with pytest.raises(ConfigError, match=r"topology\.params: 'radius' is a parameter of no"):
        build_mixing(config_from_dict(raw))


# ------------------------------------------------- f0 = "zero", the old name of "mean"
def test_toml_f0_takes_the_names_the_api_takes():
    """``nd.predict(f0="zero")`` (the documented old name of "mean") was refused in TOML:
    'expected one of ['', 'random', 'mean', 'network'], got 'zero''."""
    from ntkdyn.config.schema import CHOICES
    from ntkdyn.prediction import F0_CHOICES, resolve_f0

    assert set(CHOICES["prediction.f0"]) - {""} == set(F0_CHOICES)
    assert config_from_dict({"prediction": {"f0": "zero"}}).prediction.f0 == "mean"
    assert resolve_f0("zero", "analytic") == resolve_f0("mean", "analytic")
    with pytest.raises(ConfigError) as err:  # "zero" is "mean" for the combined checks too
        config_from_dict({"prediction": {"f0": "zero", "kernel_dtype": "mixed"}})
    assert "prediction.f0 = 'mean' / 'network'" in str(err.value)
    with pytest.raises(ConfigError) as err:
        config_from_dict({"prediction": {"f0": "zeros"}})
    assert str(err.value).startswith("config: prediction.f0: expected one of ['', 'random', "
                                     "'mean', 'zero', 'network']"), str(err.value)
    assert "'zero': old name of 'mean'" in str(err.value)


def test_predict_command_with_f0_zero_predicts_the_mean_network(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text(TINY + '[prediction]\nf0 = "zero"\n')
    out = tmp_path / "out"
    assert main(["predict", str(cfg), "--out", str(out), "--quiet"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["config"]["prediction"]["f0"] == "mean"
    traj = Trajectory.load(out / "trajectory.npz")
    assert traj.metadata["f0"] == "mean" and "mean network" in traj.metadata["quantity"]
