"""`ntkdyn check` with cross-entropy and with mini-batch SGD (issue 15): verdicts of the
linearisation at f_0 with the sufficient bound, the sweep, no fixed point, the SGD band,
the JSON schema, and the remaining refusals naming the key."""

import json

import jsonschema
import numpy as np
import pytest
from test_preflight import SCHEMA, _cfg

import ntkdyn as nd
from ntkdyn.config.experiment import from_config
from ntkdyn.config.schema import ConfigError
from ntkdyn.dynamics import ce_stability
from ntkdyn.prediction import build_problem
from ntkdyn.preflight import check

CE = {"loss": "cross_entropy", "logit_scale": 2.0}


@pytest.fixture(scope="module")
def ce_report():
    return check(_cfg(training=dict(CE, lr=0.5), prediction={"f0": "mean"}))


def test_cross_entropy_verdicts_are_the_linearisation_at_f0(ce_report):
    """Each verdict equals nd.stability on the same cross-entropy problem (lr* to 1e-9), says
    what is exact, and carries the sufficient bound (squared-loss bound x 2/s^2)."""
    rep = ce_report
    assert rep.loss == "cross_entropy" and rep.minibatch is None
    cfg = _cfg(training=dict(CE, lr=0.5), prediction={"f0": "mean"})
    exp = from_config(cfg)
    prob = build_problem(exp.arch, exp.parts, exp.mixing, kernel="analytic", seed=0, f0="zero",
                         loss="cross_entropy", logit_scale=2.0)
    sq = build_problem(exp.arch, exp.parts, exp.mixing, kernel="analytic", seed=0, f0="zero")
    for v in rep.stability:
        direct = nd.stability(prob, v.algorithm, 0.5)
        assert v.lr_star == pytest.approx(direct.lr_star, rel=1e-9)
        assert "exact for the linearisation at initialisation" in v.note
        assert "linearised at initialisation" in v.verdict
        # f_0 = 0: the squared loss's lr* scaled by K / s^2 (K = 3 classes, s = 2)
        assert v.lr_star == pytest.approx(nd.stability(sq, v.algorithm, 0.5 * 4 / 3).lr_star
                                          * 3 / 4, rel=1e-8)
        bound = nd.dynamics.stability.sufficient_bound(sq, v.algorithm) * 2 / 4
        assert v.lr_bound == pytest.approx(bound, rel=1e-12) and v.lr_bound < v.lr_star
    text = rep.text()
    assert "Cross-entropy: linearised at f_0 = 0" in text
    assert "not a guarantee" in text and "largest softmax curvature" in text
    jsonschema.validate(json.loads(rep.to_json()), SCHEMA)


def test_cross_entropy_prediction_sweep_and_no_fixed_point(ce_report):
    rep = ce_report
    p = rep.prediction
    assert rep.inside and p is not None
    assert p["steady_state_consensus_gap"] is None
    assert p["steady_state_note"] == ce_stability.NO_FIXED_POINT
    assert "steady state: none (cross-entropy on separable data has no finite fixed point: " \
           "the margins grow like log t" in rep.text()
    # the sweep: rates below lr*, each with its own status; the loss is cross-entropy (the
    # first recorded value is log K = log 3 for the mean network)
    assert len(rep.sweep) == 10 and all(s["status"] == "ok" for s in rep.sweep)
    dgd_star = rep.stability[0].lr_star
    assert all(s["lr"] < dgd_star for s in rep.sweep)
    assert p["steps_to_target"] is not None and rep.recommended is not None
    losses = [s["final_test_loss"] for s in rep.sweep]
    assert np.all(np.diff(losses) < 0)  # faster rates get further in 200 steps
    assert 0 < p["final_train_loss"] < np.log(3)


def test_cross_entropy_outside_the_linearised_regime():
    """Above the linearised lr*: outside, predictions withheld, the verdict names it."""
    inside = check(_cfg(training=dict(CE, lr=0.5), prediction={"f0": "mean"}))
    star = inside.stability[0].lr_star
    rep = check(_cfg(training=dict(CE, lr=1.2 * star), prediction={"f0": "mean"}))
    assert not rep.inside and rep.prediction is None and rep.exit_code == 1
    assert "outside the NTK regime" in rep.stability[0].verdict
    jsonschema.validate(json.loads(rep.to_json()), SCHEMA)


def test_minibatch_check_states_full_batch_and_gives_the_band():
    """batch_size: verdicts and sweep are the full-batch ones (equal to the full-batch
    check's, lr* to 1e-12), the statement says so, the chosen rate has a band over the
    sampled batch sequences that holds its mean."""
    full = check(_cfg(training={"lr": 0.3}, prediction={"f0": "mean"}))
    rep = check(_cfg(training={"lr": 0.3, "batch_size": 4, "samples": 8},
                     prediction={"f0": "mean"}))
    for a, b in zip(full.stability, rep.stability, strict=True):
        assert a.lr_star == pytest.approx(b.lr_star, rel=1e-12)
    assert [s["lr"] for s in rep.sweep] == [s["lr"] for s in full.sweep]
    assert rep.prediction["final_test_loss"] == pytest.approx(
        full.prediction["final_test_loss"], rel=1e-12)
    mb = rep.minibatch
    assert mb["batch_size"] == 4 and mb["samples"] == 8
    assert "exactly the expected SGD dynamics" in mb["statement"]
    for metric in ("test_loss", "train_loss"):
        lo, hi = mb[f"final_{metric}_band"]
        assert lo <= mb[f"final_{metric}_mean"] <= hi and lo < hi
    text = rep.text()
    assert "Mini-batch SGD (batch size 4): stability, lr*, the sweep" in text
    assert "over 8 sampled batch sequences, from the mean network (f0 = 0)" in text
    assert mb["starts_from"].startswith("the mean network (f0 = 0)")
    jsonschema.validate(json.loads(rep.to_json()), SCHEMA)


def test_minibatch_with_cross_entropy():
    rep = check(_cfg(training=dict(CE, lr=0.5, batch_size=6, samples=4),
                     prediction={"f0": "mean"}))
    assert rep.loss == "cross_entropy" and rep.minibatch["samples"] == 4
    assert "to first order" in rep.minibatch["statement"]
    assert rep.prediction["steady_state_note"] == ce_stability.NO_FIXED_POINT
    # the f0 = 0 run is not the mean network with cross-entropy, and the band says so
    assert rep.minibatch["starts_from"].startswith(
        "the network from f0 = 0 (cross-entropy: not the mean network)")
    assert "the mean network (f0 = 0)" not in rep.text()
    jsonschema.validate(json.loads(rep.to_json()), SCHEMA)


@pytest.mark.parametrize("extra, key", [
    # an integer rank with cross-entropy now runs (tests/test_preflight_lowrank_ce.py)
    ({"prediction": {"rank": "auto"}}, "prediction.rank"),
])
def test_remaining_refusals_name_the_key(extra, key):
    with pytest.raises(ConfigError, match=f"config: {key}: "):
        check(_cfg(training=dict(CE, lr=0.5), **extra))
    with pytest.raises(ConfigError, match="config: training.batch_size: --measure-edge"):
        check(_cfg(training={"lr": 0.3, "batch_size": 4}), measure_edge=True)


def test_check_width_tol_with_cross_entropy_sgd_on_a_toml(tmp_path, capsys):
    """`ntkdyn check` on a tiny TOML with training.loss = 'cross_entropy' (logit scale 2),
    batch_size and [prediction] width_tol (formerly a ConfigError naming the key): the
    report's width_for equals nd.width_for with the configured loss, logit scale, batch
    size and seed (width and spreads to 1e-12), says the tolerance is in nats, the JSON
    validates, and the text prints "within 0.05 nats"."""
    from test_width_config import _toml

    from ntkdyn.cli import main
    from ntkdyn.config.schema import load_config

    text = _toml({"width_tol": 0.05, "width_metric": "test_loss", "width_samples": 2,
                  "samples": 4, "f0": "mean"}).replace(
        '"steps": 100', '"steps": 20').replace("steps = 100", "steps = 20").replace(
        "lr = 0.1", 'lr = 0.5\nloss = "cross_entropy"\nlogit_scale = 2.0\nbatch_size = 6')
    path = tmp_path / "c.toml"
    path.write_text(text)
    assert main(["check", str(path), "--json"]) in (0, 1)
    out = json.loads(capsys.readouterr().out)
    jsonschema.validate(out, SCHEMA)
    est = out["finite_width"]["width_for"]
    assert est["loss"] == "cross_entropy" and est["error"] is None
    assert "in nats" in est["quantity"] and "mini-batch SGD, batch size 6" in est["quantity"]
    cfg = load_config(path)
    assert cfg.training.batch_size == 6 and cfg.training.logit_scale == 2.0
    exp = from_config(cfg)
    ref = nd.width_for(exp.arch, exp.parts, exp.mixing, lr=0.5, steps=cfg.steps,
                       metric="test_loss", tol=0.05, samples=2, seed=0, f0="zero",
                       init_samples=4, loss="cross_entropy", logit_scale=2.0, batch_size=6)
    assert est["width"] == ref.width
    assert est["spreads"] == pytest.approx(list(ref.spreads), rel=1e-12)
    assert main(["check", str(path)]) in (0, 1)
    assert "width for test loss within 0.05 nats (5-95 % half-width" in capsys.readouterr().out


def test_cross_entropy_topology_comparison_uses_the_linearisation():
    """--topologies with cross-entropy: each row's lr* is nd.stability of the cross-entropy
    problem on that topology (linearised at f_0 = 0), and a stable row gets a prediction."""
    cfg = _cfg(training=dict(CE, lr=0.5), prediction={"f0": "mean"})
    rep = check(cfg, topologies=["complete"])
    (row,) = rep.topologies
    exp = from_config(cfg).with_topology("complete")
    prob = build_problem(exp.arch, exp.parts, exp.mixing, kernel="analytic", seed=0, f0="zero",
                         loss="cross_entropy", logit_scale=2.0)
    direct = nd.stability(prob, exp.algorithm, 0.5)
    assert row["lr_star"] == pytest.approx(direct.lr_star, rel=1e-9)
    assert row["inside"] == direct.stable
    if row["inside"]:
        assert np.isfinite(row["final_test_loss"])
