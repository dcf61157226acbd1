"""Issue 6 from a TOML config: `ntkdyn predict`, `validate` and `check` with the new
schedules (P2PL, gradient tracking, ...) and mixing sequences (periodic, random gossip);
unknown combinations are ConfigErrors naming the key."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import numpy as np
import pytest
from conftest import strict_json

import ntkdyn
from ntkdyn import Trajectory
from ntkdyn.cli import main
from ntkdyn.config.schema import ConfigError, config_from_dict
from ntkdyn.preflight import check
from ntkdyn.trajectory import GossipTrajectory

SCHEMA = json.loads((Path(ntkdyn.__file__).parent / "schemas" / "check.schema.json").read_text())

TINY = """
seed = 0
[data]
source = "digits"
classes = [0, 1, 2]
n_train = 48
n_test = 24
[partition]
agents = 4
[topology]
{topology}
[architecture]
depth = 1
width = 64
[training]
lr = 0.3
steps = 12
record_every = 4
{training}
[prediction]
target_loss = 0.3
"""


def _write(tmp_path, topology='name = "ring"', training='algorithm = "dgd"'):
    path = tmp_path / "c.toml"
    path.write_text(TINY.format(topology=topology, training=training))
    return path


@pytest.mark.parametrize("raw, needle", [
    ({"training": {"local_steps": 3}}, "training.local_steps: only used with "
                                       "training.algorithm = 'p2pl'"),
    ({"training": {"algorithm": "extra", "momentum": 0.5}}, "training.momentum: only used"),
    ({"training": {"algorithm": "momentum", "momentum": 1.0}}, "training.momentum: expected"),
    ({"training": {"algorithm": "p2pl", "local_steps": 0}}, "training.local_steps: expected"),
    ({"topology": {"gossip_p": 0.4}}, "topology.gossip_p: only used with topology.gossip"),
    ({"topology": {"gossip": "edges", "gossip_p": 1.5}}, "topology.gossip_p: expected"),
    ({"topology": {"gossip": "one_edge", "gossip_p": 0.5}}, "topology.gossip_p: only used"),
    ({"topology": {"gossip": "all"}}, "topology.gossip: expected one of"),
    ({"topology": {"sequence": ["ring", "star"], "gossip": "edges"}}, "topology.sequence"),
    ({"topology": {"sequence": ["ring", "star"], "name": "ring"}}, "topology.sequence"),
    ({"topology": {"gossip": "edges"}, "training": {"continuous": True}},
     "training.continuous"),
    ({"training": {"algorithm": "p2pl", "continuous": True}}, "training.continuous"),
    ({"training": {"algorithm": "admm"}}, "training.algorithm: expected one of"),
])
def test_bad_combinations_name_the_key(raw, needle):
    with pytest.raises(ConfigError) as err:
        config_from_dict(raw)
    assert needle in str(err.value)


def test_unknown_topology_in_a_sequence_names_its_index(tmp_path, capsys):
    cfg = _write(tmp_path, topology='sequence = ["ring", "moebius"]')
    assert main(["predict", str(cfg), "--out", str(tmp_path / "o"), "--quiet"]) == 2
    assert "topology.sequence[1]" in capsys.readouterr().err


def test_predict_p2pl_with_random_gossip(tmp_path):
    cfg = _write(tmp_path, topology='name = "ring"\ngossip = "edges"\ngossip_p = 0.5\n'
                                     'gossip_samples = 8',
                 training='algorithm = "p2pl"\nlocal_steps = 3\nconsensus_steps = 2')
    out = tmp_path / "out"
    assert main(["predict", str(cfg), "--out", str(out), "--quiet"]) == 0
    one = Trajectory.load(out / "trajectory.npz")
    # the default is one random network (f0 draw s and mixing sequence s); its mean network
    # (f0 = 0) is the gossip trajectory over the same 8 sequences
    assert type(one).__name__ == "RandomNetworkTrajectory" and one.samples == 8
    traj = one.mean_network
    assert isinstance(traj, GossipTrajectory) and traj.samples == 8
    assert traj.phases == ["local", "consensus"] and traj.train_loss.shape == (8, 4)
    assert traj.quantiles["test_loss"].shape == (5, 8, 4)
    assert traj.expected.train_loss.shape == (8, 4)
    assert traj.metadata["algorithm_options"] == {"local_steps": 3, "consensus_steps": 2}
    assert traj.metadata["mixing_process"]["kind"] == "random_edges"
    local = traj.at_phase("local")
    assert local.quantiles["test_loss"].shape == (5, 4, 4)
    np.testing.assert_array_equal(local.steps, [0, 4, 8, 12])
    assert (out / "trajectory.png").stat().st_size > 10_000


def test_check_reports_the_new_schedule_on_a_periodic_sequence(tmp_path):
    cfg = config_from_dict({
        "data": {"source": "digits", "classes": [0, 1, 2], "n_train": 32, "n_test": 16},
        "partition": {"agents": 4}, "topology": {"sequence": ["ring", "star"]},
        "architecture": {"depth": 1, "width": 64},
        "training": {"algorithm": "gradient_tracking", "lr": 0.2, "steps": 40,
                     "record_every": 10},
        "prediction": {"target_loss": 0.3}})
    rep = check(cfg)
    names = [v.algorithm for v in rep.stability]
    assert names == ["dgd", "atc", "cta", "gradient_tracking"]
    gt = rep.stability[-1]
    assert "augmented state (3 blocks" in gt.operator and "period of 2 steps" in gt.operator
    assert np.isfinite(gt.lr_star) and gt.inside
    assert rep.prediction is not None and rep.prediction["steady_state_consensus_gap"] is None
    text = rep.text()
    assert "GRADIENT TRACKING at lr=0.2" in text and "periodic sequence ring+star" in text
    # no sufficient bound for gradient tracking with Q > 1: "none" in the table, null in
    # standard JSON (it was a bare NaN that jq refuses, and "nan" in the table)
    assert np.isnan(gt.lr_bound)
    row = next(line for line in text.splitlines() if line.strip().startswith("gradient_tr"))
    assert " none " in row and "nan" not in row
    report = strict_json(rep.to_json())
    jsonschema.validate(report, SCHEMA)
    assert report["stability"][-1]["lr_bound"] is None


def test_check_momentum_with_random_gossip_json(tmp_path, capsys):
    cfg = _write(tmp_path, topology='name = "ring"\ngossip = "one_edge"\ngossip_samples = 4',
                 training='algorithm = "momentum"\nmomentum = 0.5')
    code = main(["check", str(cfg), "--json", "--quiet", "--topologies", "complete"])
    report = strict_json(capsys.readouterr().out)
    jsonschema.validate(report, SCHEMA)
    assert code == report["exit_code"]
    row = report["topologies"][0]  # the same gossip on the complete graph, E[W] spectrum
    assert row["topology"] == "complete" and 0 < row["spectral_gap"] <= 1
    mom = report["stability"][-1]
    assert mom["algorithm"] == "momentum" and "E[W]" in mom["operator"]
    assert report["prediction"]["steady_state_consensus_gap"] >= 0


def test_validate_p2pl_from_config(tmp_path):
    cfg = _write(tmp_path, training='algorithm = "p2pl"\nlocal_steps = 2')
    out = tmp_path / "out"
    assert main(["validate", str(cfg), "--out", str(out), "--kernels", "empirical",
                 "--quiet"]) == 0
    obs = Trajectory.load(out / "observed.npz")
    lin = Trajectory.load(out / "linearised.npz")
    pred = Trajectory.load(out / "predicted_empirical.npz")
    assert obs.phases == pred.phases == ["local", "consensus"]
    agree = strict_json((out / "agreement.json").read_text())["agreement"]
    assert agree["linearised vs empirical"]["steps_compared"] == 8
    # float32 linearised training vs the full empirical kernel (width 64): ~1e-5
    assert agree["linearised vs empirical"]["metrics"]["test_loss"]["mean"] < 1e-4
    assert agree["nonlinear vs empirical"]["metrics"]["test_loss"]["mean"] < 0.2
    assert lin.status == "ok"


def test_one_list_of_algorithm_names():
    """Issue 13 item 3: the configuration schema, the check report's JSON schema and
    ``get_algorithm`` accept the same names (``ntkdyn.algorithms.NAMES``), and a configured
    name with its options becomes the same cached object ``get_algorithm`` gives."""
    from ntkdyn import algorithms
    from ntkdyn.config.experiment import algorithm_of
    from ntkdyn.config.schema import CHOICES

    assert tuple(CHOICES["training.algorithm"]) == algorithms.NAMES
    assert SCHEMA["properties"]["algorithm"]["enum"] == \
        list(algorithms.NAMES)
    for name in algorithms.NAMES:
        cfg = config_from_dict({"training": {"algorithm": name}})
        assert algorithm_of(cfg) is algorithms.get_algorithm(name)
    cfg = config_from_dict({"training": {"algorithm": "p2pl", "local_steps": 3,
                                         "consensus_steps": 2}})
    assert algorithm_of(cfg) is algorithms.p2pl(3, 2)
    cfg = config_from_dict({"training": {"algorithm": "momentum", "momentum": 0.5}})
    assert algorithm_of(cfg) is algorithms.momentum(0.5)


def test_check_reports_the_set_verdict_when_the_krylov_radius_fails(tmp_path, capsys,
                                                                   monkeypatch):
    """An eigensolver that verifies no eigenvalue at the configured rate is not a crash:
    the verdict is the stable set's, the radius is "n/a" in the table and null in the JSON,
    and the method says why (NEXT on a ring of 8 used to end, after 12 minutes, in an
    ARPACK RuntimeError traceback)."""
    from ntkdyn.dynamics import stability as stab

    original = stab.StepOperator.spectral_radius

    def failing(self, s, method="auto", inside=None):
        if inside is not None:  # the report's radius at lr, not the stable set's search
            raise RuntimeError("spectral_radius: ARPACK found no eigenvalue that verifies")
        return original(self, s, method)

    monkeypatch.setattr(stab.StepOperator, "spectral_radius", failing)
    cfg = _write(tmp_path, training='algorithm = "gradient_tracking"')
    code = main(["check", str(cfg), "--json", "--quiet"])
    report = strict_json(capsys.readouterr().out)
    jsonschema.validate(report, SCHEMA)
    gt = report["stability"][-1]
    assert gt["algorithm"] == "gradient_tracking" and gt["spectral_radius"] is None
    assert gt["inside"] is True and "not computed" in gt["method"] and code in (0, 1)
    assert main(["check", str(cfg), "--quiet"]) in (0, 1)
    row = next(line for line in capsys.readouterr().out.splitlines()
               if line.strip().startswith("gradient_tracking"))
    assert " n/a " in row and "nan" not in row
