"""`ntkdyn check`: regime wording follows lr*, JSON schema, exit codes, bad input."""

import json
from pathlib import Path

import jsonschema
import numpy as np
import pytest

import ntkdyn
from ntkdyn.cli import main
from ntkdyn.config.schema import config_from_dict
from ntkdyn.preflight import check

SCHEMA = json.loads((Path(ntkdyn.__file__).parent / "schemas" / "check.schema.json").read_text())

BASE = {
    "seed": 0,
    "data": {"source": "digits", "classes": [0, 1, 2], "n_train": 48, "n_test": 24},
    "partition": {"agents": 4},
    "topology": {"name": "ring"},
    "architecture": {"depth": 1, "width": 256},
    "training": {"algorithm": "dgd", "lr": 0.1, "steps": 200, "record_every": 20},
    "prediction": {"target_loss": 0.2},
}


def _cfg(**sections):
    raw = json.loads(json.dumps(BASE))
    for sec, vals in sections.items():
        raw[sec].update(vals)
    return config_from_dict(raw)


@pytest.fixture(scope="module")
def lr_stars():
    rep = check(_cfg())
    return {v.algorithm: v.lr_star for v in rep.stability}


def test_inside_the_regime_shows_predictions(lr_stars):
    lr = 0.5 * lr_stars["dgd"]
    rep = check(_cfg(training={"lr": lr}, prediction={"target_loss": 0.2, "f0": "mean"}))
    assert rep.inside and rep.prediction is not None
    assert "inside the NTK regime" in rep.stability[0].verdict
    text = rep.text()
    assert "Prediction at step 200" in text and "Predictions withheld" not in text
    assert rep.prediction["steps_to_target"] is not None and rep.exit_code == 0
    assert rep.stability[0].lr_bound <= rep.stability[0].lr_star
    # the sweep stays below lr* and the recommendation below the safety margin
    assert all(s["lr"] < lr_stars["dgd"] for s in rep.sweep)
    assert rep.recommended["lr"] <= 0.9 * lr_stars["dgd"]


def test_outside_the_regime_withholds_predictions_and_says_linearised(lr_stars):
    """Between DGD's and ATC's lr*: DGD outside, ATC/CTA inside."""
    lr = 0.5 * (lr_stars["dgd"] + lr_stars["atc"])
    assert lr_stars["dgd"] < lr < lr_stars["atc"]
    rep = check(_cfg(training={"lr": lr}))
    assert not rep.inside and rep.prediction is None and rep.exit_code == 1
    dgd, atc, cta = rep.stability
    assert "outside the NTK regime" in dgd.verdict
    assert "linearised dynamics diverge" in dgd.verdict
    assert "real networks may still train" in dgd.verdict
    assert atc.inside and cta.inside
    text = rep.text()
    assert "Predictions withheld" in text
    # never a claim that the real network diverges without --measure-edge
    lowered = text.lower()
    assert "real network diverges" not in lowered and "network will diverge" not in lowered
    assert rep.edge is None


def test_exit_status_is_of_the_headline_network(lr_stars):
    """The default (analytic kernel) reports one random network first: the exit status and
    ``target_reached`` follow its expected test loss, not the mean network's, and the text
    says so; the sweep and the recommended rate name the network they are of."""
    lr = 0.5 * lr_stars["dgd"]
    rep = check(_cfg(training={"lr": lr}))
    one = rep.prediction["one_random_network"]
    assert rep.prediction["steps_to_target"] is not None  # the mean network reaches 0.2
    assert one["steps_to_target_expected"] is None  # one random network does not
    assert rep.target_of == "the expected test loss of one random network"
    assert not rep.target_reached and rep.exit_code == 1
    # the squared loss's networks share draw columns: the Monte-Carlo error is a bound
    assert one["mc_error_is_bound"] and one["final_test_loss_mc_error"] > 0
    text = rep.text()
    assert ("Exit status 1: inside the NTK regime, but the expected test loss of one random "
            "network does not reach the target 0.2 within 200 steps.") in text
    assert "Learning-rate sweep (DGD, the mean network (f0 = 0), rates up to lr*" in text
    assert "of lr*; the mean network (f0 = 0))" in text  # the recommended rate's line
    assert rep.to_dict()["target_of"] == rep.target_of
    # a target the expected loss does reach: exit 0
    loose = one["final_test_loss_expected"] * 1.01
    rep = check(_cfg(training={"lr": lr}, prediction={"target_loss": loose}))
    assert rep.target_reached and rep.exit_code == 0 and "Exit status 0" in rep.text()
    # f0 = "mean": the mean network is the headline, and its target decides
    rep = check(_cfg(training={"lr": lr}, prediction={"target_loss": 0.2, "f0": "mean"}))
    assert rep.prediction["one_random_network"] is None
    assert rep.target_of == "the test loss of the mean network (f0 = 0)"
    assert rep.exit_code == 0


def test_target_missed_exit_1(lr_stars):
    rep = check(_cfg(training={"lr": 0.5 * lr_stars["dgd"]}, prediction={"target_loss": 1e-6}))
    assert rep.inside and not rep.target_reached and rep.exit_code == 1
    assert "not reached" in rep.text()


def test_json_output_validates_against_schema(lr_stars, tmp_path, capsys):
    path = tmp_path / "c.toml"
    lr = 0.5 * lr_stars["dgd"]
    path.write_text(_toml(training={"lr": lr}, prediction={"target_loss": 0.2, "f0": "mean"}))
    code = main(["check", str(path), "--json", "--topologies", "ring,complete"])
    out = json.loads(capsys.readouterr().out)
    jsonschema.validate(out, SCHEMA)
    assert code == out["exit_code"] == 0
    assert out["network"] == "mean network (f0 = 0)"
    assert [t["topology"] for t in out["topologies"]] == ["ring", "complete"]
    complete = out["topologies"][1]
    assert complete["spectral_gap"] == pytest.approx(1.0)


def test_sweep_shares_the_kernel_passes(lr_stars):
    rep = check(_cfg(training={"lr": 0.5 * lr_stars["dgd"]}))
    assert len(rep.sweep) == 10
    losses = [s["final_test_loss"] for s in rep.sweep]
    assert np.all(np.isfinite(losses))


def test_float32_sweep_agrees_with_the_float64_prediction(lr_stars, monkeypatch):
    """The check's batched pass multiplies by a float32 kernel (``SWEEP_DTYPE``); its
    numbers stay within 1e-5 relative of the float64 prediction (``ntkdyn predict``)."""
    import sys

    check_mod = sys.modules["ntkdyn.preflight"]  # ``ntkdyn.preflight`` is the function (issue 13)
    cfg = _cfg(training={"lr": 0.5 * lr_stars["dgd"]})
    assert check_mod.SWEEP_DTYPE == "float32"
    fast = check(cfg)
    monkeypatch.setattr(check_mod, "SWEEP_DTYPE", "float64")
    exact = check(cfg)
    for key in ("final_train_loss", "final_test_loss", "final_consensus_dist"):
        a, b = fast.prediction[key], exact.prediction[key]
        assert abs(a - b) <= 1e-5 * abs(b), (key, a, b)
        for s32, s64 in zip(fast.sweep, exact.sweep, strict=True):
            assert abs(s32[key] - s64[key]) <= 1e-5 * abs(s64[key]), (key, s32, s64)
    assert fast.prediction["steps_to_target"] == exact.prediction["steps_to_target"]


def _toml(**sections) -> str:
    raw = json.loads(json.dumps(BASE))
    for sec, vals in sections.items():
        raw[sec].update(vals)
    lines = [f"seed = {raw.pop('seed')}"]
    for sec, vals in raw.items():
        lines.append(f"[{sec}]")
        for k, v in vals.items():
            lines.append(f"{k} = {json.dumps(v)}")
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("edit, needle", [
    ({"training": {"lrr": 0.1}}, "unknown key 'training.lrr'"),
    ({"training": {"lr": "high"}}, "training.lr: expected a number"),
    ({"training": {"lr": -1.0}}, "training.lr: expected a value > 0"),
    ({"partition": {"agents": 100}}, "agents"),
    # the verdicts are of discrete steps; before, the flow's config got them silently
    ({"training": {"continuous": True}},
     "config: training.continuous: ntkdyn check analyses discrete steps"),
])
def test_invalid_input_exit_2(edit, needle, tmp_path, capsys):
    path = tmp_path / "c.toml"
    path.write_text(_toml(**edit))
    assert main(["check", str(path)]) == 2
    assert needle in capsys.readouterr().err


def test_mixing_file_not_stochastic_exit_2(tmp_path, capsys):
    np.savetxt(tmp_path / "W.txt", np.full((4, 4), 0.3))
    path = tmp_path / "c.toml"
    path.write_text(_toml(topology={"mixing_file": "W.txt"}))
    assert main(["check", str(path)]) == 2
    assert "topology.mixing_file" in capsys.readouterr().err


def test_bad_topologies_argument_exit_2_before_the_kernel(tmp_path, capsys, monkeypatch):
    """A ``--topologies`` entry that does not build is an error naming the argument, raised
    before any kernel is computed (it used to come after the whole report)."""
    import ntkdyn.preflight as pf

    def no_kernel(*a, **k):
        raise AssertionError("kernel computed before --topologies was checked")

    monkeypatch.setattr(pf, "build_problem_and_nngp", no_kernel)
    path = tmp_path / "c.toml"
    path.write_text(_toml())
    assert main(["check", str(path), "--topologies", "ring,bogus"]) == 2
    err = capsys.readouterr().err
    assert "--topologies: 'bogus': unknown topology" in err and "Traceback" not in err


@pytest.mark.parametrize("extra, needle", [
    (["--topologies", ""], "--topologies: expected comma-separated topology names, got ''"),
    (["--topologies", "ring,,star"], "--topologies: expected comma-separated topology names, "
                                     "got 'ring,,star'"),
    (["--measure-edge", "--edge-steps", "0"], "--edge-steps: expected an integer >= 1"),
    (["--measure-edge", "--edge-steps", "-5"], "--edge-steps: expected an integer >= 1"),
])
def test_bad_check_options_exit_2_before_the_kernel(tmp_path, capsys, monkeypatch, extra,
                                                    needle):
    """An empty --topologies entry was dropped silently ('' gave no table); --edge-steps 0
    reported real training 'did not converge' at lr*/8 after 0 steps, and -5 was refused
    after the whole check, naming 'steps'.  Now exit 2 naming the option, before any
    kernel."""
    import ntkdyn.preflight as pf

    def no_kernel(*a, **k):
        raise AssertionError("kernel computed before the options were checked")

    monkeypatch.setattr(pf, "build_problem_and_nngp", no_kernel)
    path = tmp_path / "c.toml"
    path.write_text(_toml())
    assert main(["check", str(path), "--cache", str(tmp_path / "cache")] + extra) == 2
    err = capsys.readouterr().err
    assert f"ntkdyn check: error: {needle}" in err and "Traceback" not in err


def test_report_names_the_mixing_file_and_an_empty_sweep(tmp_path, capsys):
    """A mixing matrix given as a file is named as such (the report said "ring", the default
    name); a directed cycle (DGD unstable at every rate) says that no rate is swept."""
    np.savetxt(tmp_path / "W.txt", np.roll(np.eye(4), 1, axis=1))
    path = tmp_path / "c.toml"
    path.write_text(_toml(topology={"mixing_file": "W.txt"}, training={"algorithm": "dgd"}))
    assert main(["check", str(path)]) == 1
    out = capsys.readouterr().out
    assert "on a mixing matrix from " in out and "ring" not in out.split("\n")[0]
    assert "no rate swept: lr* is 0" in out and "no rate is recommended" in out


def test_mixing_file_disconnected_exit_2(tmp_path, capsys):
    w = np.kron(np.eye(2), np.full((2, 2), 0.5))
    np.savetxt(tmp_path / "W.txt", w)
    path = tmp_path / "c.toml"
    path.write_text(_toml(topology={"mixing_file": "W.txt"}))
    assert main(["check", str(path)]) == 2
    assert "connected" in capsys.readouterr().err


def test_empty_shard_exit_2(tmp_path, capsys):
    path = tmp_path / "c.toml"
    path.write_text(_toml(partition={"scheme": "dirichlet", "alpha": 1e-4, "agents": 4},
                          data={"n_train": 12}))
    assert main(["check", str(path)]) == 2
    assert "agent" in capsys.readouterr().err


def test_memory_estimate_beyond_machine_exit_2(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("NTKDYN_MEMORY_LIMIT", "64KB")
    path = tmp_path / "c.toml"
    path.write_text(_toml())
    assert main(["check", str(path)]) == 2
    err = capsys.readouterr().err
    assert "needs about" in err and "fewer training samples" in err


def test_measure_edge_bracket_is_confirmed_by_rerun(lr_stars, tmp_path):
    """--measure-edge: a converged and a non-converged rate; re-running both agrees."""
    from ntkdyn.config.experiment import from_config
    from ntkdyn.validation.edge import trial

    cfg = _cfg(training={"lr": 0.5 * (lr_stars["dgd"] + lr_stars["atc"])})
    rep = check(cfg, measure_edge=True, edge_steps=150, edge_bisections=2,
                cache_dir=tmp_path / "cache")
    edge = rep.edge
    assert edge["converged_lr"] is not None and edge["diverged_lr"] is not None
    assert edge["converged_lr"] < edge["diverged_lr"]
    assert edge["converged_lr"] >= edge["lr_star"]  # real training goes beyond lr* here
    exp = from_config(cfg)
    assert trial(exp, edge["converged_lr"], 150)["converged"]  # no cache: trained again
    assert not trial(exp, edge["diverged_lr"], 150)["converged"]
    text = rep.text()
    assert "Observed edge of real training" in text and "did not converge" in text
    assert len(list((tmp_path / "cache").glob("*.json"))) == len(edge["trials"])


def test_one_random_network_with_minibatches_is_the_predict_commands(tmp_path, capsys):
    """With mini-batch SGD the check's one random network is ``ntkdyn predict``'s: the same
    networks, each on its batch sequence (it had run the full-batch dynamics over a default
    number of initialisations: 0.579 against predict's 0.554 in an audit); the text says
    over what the band is.  Float32 kernel products in the check: within 1e-5."""
    raw = {"training": {"lr": 0.3, "steps": 40, "record_every": 20, "batch_size": 4,
                        "samples": 4}}
    path = tmp_path / "c.toml"
    path.write_text(_toml(**raw))
    rep = check(_cfg(**raw))
    one = rep.prediction["one_random_network"]
    assert one["samples"] == 4
    assert ("one random network (over 4 sampled initialisations and mini-batch sequences "
            "jointly, network s on sequence s, as ntkdyn predict)") in rep.text()
    out = tmp_path / "out"
    assert main(["predict", str(path), "--out", str(out), "--quiet"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert one["final_test_loss_expected"] == pytest.approx(summary["final_test_loss_mean"],
                                                            rel=1e-5)
    assert one["final_test_loss_band"] == pytest.approx(summary["final_test_loss_band_5_95"],
                                                        rel=1e-5)
    # independent networks (each on its batch sequence): the standard error, not a bound
    assert not one["mc_error_is_bound"]
    assert one["final_test_loss_mc_error"] == pytest.approx(
        summary["final_test_loss_mc_error"], rel=1e-4)
    assert "Monte-Carlo standard error of those expected values: test loss" in rep.text()
    # the band over batch sequences from f0 = 0 states its own (independent sequences)
    assert rep.minibatch["final_test_loss_mc_error"] > 0
    assert "Monte-Carlo standard error of those means: test loss" in rep.text()


def test_one_sampled_network_has_no_monte_carlo_error():
    """``prediction.samples = 1`` (and one batch sequence): no spread to estimate the
    Monte-Carlo error from, so none is reported (the check had raised "draws: expected (P,
    ...) with P >= 2" from the report's error field)."""
    rep = check(_cfg(training={"steps": 40, "batch_size": 4, "samples": 1},
                     prediction={"samples": 1, "target_loss": 0.2}))
    one = rep.prediction["one_random_network"]
    assert one["samples"] == 1 and one["final_test_loss_mc_error"] is None
    assert rep.minibatch["final_test_loss_mc_error"] is None
    assert "Monte-Carlo" not in rep.text()
    # one draw is not called an expected value with a (zero-width) band
    assert "samples = 1: one draw, not an expected value; no band" in rep.text()
    assert "expected (5-95 %" not in rep.text()


def test_random_gossip_sweep_runs_fewer_sequences_with_their_error(monkeypatch):
    """Random gossip: each rate of the sweep and of the topology comparison runs
    ``SWEEP_SEQUENCES`` sampled mixing sequences (the first of the prediction's, the same for
    every rate) and reports their mean with its Monte-Carlo standard error; the chosen rate's
    prediction keeps the configured count.  Each row equals ``run_problem`` over that many
    sequences at its rate (float64 products here, to 1e-10 relative)."""
    import sys

    from ntkdyn.config.experiment import from_config
    from ntkdyn.dynamics.run import run_problem
    from ntkdyn.prediction import build_problem

    mod = sys.modules["ntkdyn.preflight"]
    monkeypatch.setattr(mod, "SWEEP_SEQUENCES", 3)
    monkeypatch.setattr(mod, "SWEEP_DTYPE", "float64")
    cfg = _cfg(topology={"gossip": "edges", "gossip_p": 0.5, "gossip_samples": 5},
               training={"steps": 60, "lr": 0.05}, prediction={"f0": "mean"})
    rep = check(cfg, topologies=["complete"])
    assert rep.inside and len(rep.sweep) == 10
    assert {s["sequences"] for s in rep.sweep} == {3} and rep.prediction["sequences"] == 5
    exp = from_config(cfg)
    problem = build_problem(exp.arch, exp.parts, exp.mixing, kernel="analytic", seed=0)
    rates = [s["lr"] for s in rep.sweep[::3]]
    trajs = run_problem(problem, "dgd", rates, cfg.steps, samples=3, reference=False,
                        check_stability=False)
    for s, t in zip(rep.sweep[::3], trajs, strict=True):
        final = t.per_sample["test_loss"][:, -1].mean(axis=-1)
        assert s["final_test_loss"] == pytest.approx(final.mean(), rel=1e-10)
        assert s["final_test_loss_mc_error"] == pytest.approx(
            final.std(ddof=1) / np.sqrt(3), rel=1e-8)
    # sequence s of the sweep is sequence s of the prediction (first 3 of 5)
    five = run_problem(problem, "dgd", rates[:1], cfg.steps, samples=5, reference=False,
                       check_stability=False)[0]
    np.testing.assert_allclose(five.per_sample["test_loss"][:3],
                               trajs[0].per_sample["test_loss"], rtol=1e-12)
    # the chosen rate over all 5 sequences
    one = run_problem(problem, "dgd", [0.05], cfg.steps, samples=5, reference=False,
                      check_stability=False)[0]
    assert rep.prediction["final_test_loss"] == pytest.approx(
        float(one.network_mean("test_loss")[-1]), rel=1e-10)
    # the comparison row over 3 sequences on the complete graph
    other = exp.with_topology("complete")
    row = run_problem(build_problem(other.arch, other.parts, other.mixing, kernel="analytic",
                                    seed=0), "dgd", [0.05], cfg.steps, samples=3,
                      reference=False, check_stability=False)[0]
    assert rep.topologies[0]["final_test_loss"] == pytest.approx(
        float(row.network_mean("test_loss")[-1]), rel=1e-10)
    text = rep.text()
    assert "the mean over 3 sampled mixing sequences per rate" in text
    first = f"  {rep.sweep[0]['lr']:.4g}"
    sweep_rows = [line for line in text.splitlines() if line.startswith(first)]
    assert sweep_rows and " +- " in sweep_rows[0]
    jsonschema.validate(json.loads(rep.to_json()), SCHEMA)


def test_random_gossip_prediction_reuses_the_random_networks_mean(monkeypatch):
    """With the default ``f0 = "random"`` and random gossip, the chosen rate's mean network
    over the configured sequences is the one random network's ``f_0 = 0`` run over the same
    sequences (no second pass); it equals ``run_problem`` over those sequences (float64,
    1e-10)."""
    import sys

    from ntkdyn.config.experiment import from_config
    from ntkdyn.dynamics.run import run_problem
    from ntkdyn.prediction import build_problem

    mod = sys.modules["ntkdyn.preflight"]
    monkeypatch.setattr(mod, "SWEEP_SEQUENCES", 2)
    monkeypatch.setattr(mod, "SWEEP_DTYPE", "float64")
    calls = []
    real = mod.run_problem
    monkeypatch.setattr(mod, "run_problem", lambda *a, **k: calls.append(k) or real(*a, **k))
    cfg = _cfg(topology={"gossip": "one_edge", "gossip_samples": 4},
               training={"steps": 40, "lr": 0.05})
    rep = check(cfg)
    assert rep.prediction["sequences"] == 4 and rep.sweep[0]["sequences"] == 2
    assert [k["samples"] for k in calls] == [4, 2]  # the random networks, the sweep
    assert "init" in calls[0] and rep.prediction["one_random_network"]["samples"] == 4
    exp = from_config(cfg)
    problem = build_problem(exp.arch, exp.parts, exp.mixing, kernel="analytic", seed=0)
    one = run_problem(problem, "dgd", [0.05], cfg.steps, samples=4, reference=False,
                      check_stability=False)[0]
    for key, metric in (("final_test_loss", "test_loss"), ("final_train_loss", "train_loss"),
                        ("final_consensus_dist", "consensus_dist")):
        assert rep.prediction[key] == pytest.approx(float(one.network_mean(metric)[-1]),
                                                    rel=1e-10), key


def test_prediction_is_the_random_networks_mean_not_a_sweep_group(monkeypatch):
    """With the default ``f0 = "random"`` on a static ``W``, full batch, the chosen rate's
    mean network is the one random network's ``f_0 = 0`` run: the sweep's pass holds the
    10 fractions of ``lr*`` only (not an 11th group at the chosen rate), with the training
    records at the horizon only, and the prediction equals ``run_problem`` at that rate
    (float64, 1e-10)."""
    import sys

    from ntkdyn.config.experiment import from_config
    from ntkdyn.dynamics.run import run_problem
    from ntkdyn.prediction import build_problem

    mod = sys.modules["ntkdyn.preflight"]
    monkeypatch.setattr(mod, "SWEEP_DTYPE", "float64")
    calls = []
    real = mod.run_problem
    monkeypatch.setattr(mod, "run_problem",
                        lambda *a, **k: calls.append((list(a[2]), k)) or real(*a, **k))
    cfg = _cfg(training={"steps": 60, "lr": 0.1})
    rep = check(cfg)
    assert rep.inside and rep.prediction["one_random_network"] is not None
    assert len(calls) == 2 and "init" in calls[0][1]  # the random networks, the sweep
    sweep_rates = calls[1][0]
    assert len(sweep_rates) == 10 and 0.1 not in sweep_rates
    assert calls[1][1]["train_records"] == "final"  # the training figures at the horizon
    assert [row["lr"] for row in rep.sweep] == pytest.approx(sweep_rates, rel=1e-15)
    exp = from_config(cfg)
    problem = build_problem(exp.arch, exp.parts, exp.mixing, kernel="analytic", seed=0)
    mean = run_problem(problem, "dgd", [0.1], cfg.steps, reference=False,
                       check_stability=False)[0]
    for key, metric in (("final_test_loss", "test_loss"), ("final_train_loss", "train_loss"),
                        ("final_consensus_dist", "consensus_dist")):
        assert rep.prediction[key] == pytest.approx(float(mean.network_mean(metric)[-1]),
                                                    rel=1e-10), key


def test_memory_check_with_sequences_counts_each_run(monkeypatch):
    """With random gossip (or mini-batch SGD) the check's runs come one after the other: the
    sweep over SWEEP_SEQUENCES sequences per rate, the chosen rate's mean network over all
    configured sequences, its one random network (network s on sequence s), the mini-batch
    band; the memory check before the kernels are built counts each run's own column
    groups.  It counted the sweep's 11 rates times the default sequences (64, or 3 x 16 +
    1 groups for f0 = "random"): 100 agents on an Erdos-Renyi graph, 800 digits, was
    refused as needing 76-101 GB.  Here a limit between the two estimates lets it run."""
    from ntkdyn import prediction
    from ntkdyn.config.experiment import from_config
    from ntkdyn.preflight import SWEEP_FRACTIONS, SWEEP_SEQUENCES, _sequence_runs

    # gossip and mini-batches: the full-batch runs over gossip_samples (default 64)
    # sequences, the mini-batch ones over training.samples (sequence s: gossip and batches)
    cfg = _cfg(topology={"gossip": "edges", "gossip_p": 0.5},
               training={"batch_size": 4, "samples": 6})
    exp = from_config(cfg)
    rates = len(SWEEP_FRACTIONS) + 1
    assert _sequence_runs(exp, cfg, "random") == [
        dict(rates=rates, samples=SWEEP_SEQUENCES, f0_random=False, batch_size=0),
        dict(rates=1, samples=64, f0_random=False, batch_size=0),
        dict(rates=1, samples=6, f0_random=True, batch_size=4),
        dict(rates=1, samples=6, f0_random=False, batch_size=4)]
    assert _sequence_runs(from_config(_cfg()), _cfg(), "random") is None  # one batched pass

    cfg = _cfg(topology={"gossip": "edges", "gossip_p": 0.5, "gossip_samples": 12})
    exp = from_config(cfg)
    data, q = exp.parts.dataset, exp.parts.num_agents
    shape = (exp.arch, data.num_train, data.num_test, data.dim, data.y_train.shape[1], q)
    seen = []
    real = prediction.ensure_prediction_fits
    monkeypatch.setattr(prediction, "ensure_prediction_fits",
                        lambda *a, **kw: seen.append(kw) or real(*a, **kw))
    runs = _sequence_runs(exp, cfg, "random")
    common = dict(kernel="analytic", traced=True, loss="mse", random_mixing=True)
    new = max(prediction.prediction_estimate(*shape, **common, **run) for run in runs)
    old = prediction.prediction_estimate(*shape, **common, rates=rates, f0_random=True)
    assert new < old
    monkeypatch.setenv("NTKDYN_MEMORY_LIMIT", str((new + old) // 2))
    rep = check(cfg)
    assert rep.prediction is not None and len(rep.sweep) == len(SWEEP_FRACTIONS)
    assert [{k: s[k] for k in runs[0]} for s in seen] == runs


def test_topology_row_reports_lambda_min_of_a_reversible_mixing_matrix():
    """The comparison table's ``lambda_min`` for the uniform rule on a star (row-stochastic,
    not symmetric, reversible) is W's smallest eigenvalue (real: W is similar to the
    symmetric ``Pi^{1/2} W Pi^{-1/2}``), not "-"; a symmetric rule keeps ``eigvalsh``."""
    from ntkdyn import graphs
    from ntkdyn.config.experiment import from_config
    from ntkdyn.preflight import _topology_row

    for rule in ("uniform", "metropolis"):
        cfg = _cfg(topology={"name": "ring", "rule": rule}, training={"steps": 20})
        exp = from_config(cfg)
        row = _topology_row(exp, "star", cfg)
        w = graphs.mixing(graphs.topology("star", 4), rule=rule)
        assert graphs.is_symmetric(w) == (rule == "metropolis")
        assert row["lambda_min"] == pytest.approx(np.linalg.eigvals(w).real.min(), abs=1e-12)
        assert row["lambda_min"] < 0.5


def test_check_without_test_data_is_an_error_naming_n_test():
    """``data.n_test = 0`` is valid for ``predict``; ``check`` (whose target and sweep are
    of the test loss) refuses it naming the key, before any computation (it raised a
    message about an unrecorded metric)."""
    from ntkdyn.config.schema import ConfigError

    cfg = _cfg(data={"source": "digits", "classes": [0, 1, 2], "n_train": 48, "n_test": 0})
    with pytest.raises(ConfigError, match=r"config: data\.n_test: .* expected data\.n_test > 0"):
        check(cfg)


@pytest.mark.parametrize("loss", ["mse", "cross_entropy"])
def test_lowrank_check_of_the_seeded_network_with_the_analytic_kernel(loss, tmp_path):
    """``prediction.rank`` with ``f0 = "network"`` and the analytic kernel: the network
    initialised with the seed gives the initial outputs (it crashed: no parameters were
    made without the empirical kernel); the chosen rate's final test loss is that of
    ``ntkdyn predict``'s low-rank prediction (1e-10)."""
    from ntkdyn import Trajectory

    path = tmp_path / "c.toml"
    path.write_text(_toml(training={"steps": 20, "record_every": 10, "lr": 0.1, "loss": loss},
                          prediction={"target_loss": 0.2, "f0": "network", "rank": 12}))
    rep = check(path)
    assert rep.network.startswith("network initialised with seed 0")
    assert main(["predict", str(path), "--quiet", "--out", str(tmp_path / "out")]) == 0
    traj = Trajectory.load(tmp_path / "out" / "trajectory.npz")
    assert rep.prediction["final_test_loss"] == pytest.approx(
        float(traj.network_mean("test_loss")[-1]), rel=1e-10)


@pytest.mark.parametrize("f0", ["mean", "random"])
def test_sampled_gossip_sequences_that_grow_are_not_inside_or_recommended(f0):
    """Fuzz find: NEXT with one random edge per step at lr 1.27 (lr* of E[W] 1.336) was
    "inside", exit 0, with a mean-network train loss of 2.8e5, and the sweep recommended
    1.143, whose sequences also grow.  The verdict of the mean state stays (it is exact for
    E[W]); the trajectory's own status makes the exit 1 and keeps growing rates out of
    the recommendation.  With f0 = "random" the one random network (network s on
    sequence s) is "unstable" too: its status was network 0's alone."""
    rep = check(_cfg(topology={"gossip": "one_edge", "gossip_samples": 8},
                     architecture={"depth": 2, "width": 256},
                     training={"algorithm": "next", "lr": 1.27, "steps": 300,
                               "record_every": 10},
                     prediction={"target_loss": 0.3, "f0": f0}))
    assert rep.inside  # the mean state converges
    assert rep.trajectory_status == "unstable" and rep.exit_code == 1
    assert "sampled mixing sequences ended above their initial loss" in \
        rep.prediction["growing"]
    text = rep.text()
    assert rep.prediction["growing"] in text
    assert "Exit status 1: inside the NTK regime by the operator, but the predicted " \
        "trajectory at lr=1.27 is unstable" in text
    unstable = [s for s in rep.sweep if s["status"] != "ok"]
    assert unstable and all("growing" in s for s in unstable)
    assert rep.recommended["lr"] < min(s["lr"] for s in unstable)
    jsonschema.validate(json.loads(rep.to_json()), SCHEMA)
    one = rep.prediction["one_random_network"]
    if f0 == "random":
        assert one["status"] == "unstable"
        assert "sampled networks (network s on mixing sequence s)" in one["growing"]
    else:
        assert one is None


def test_check_and_predict_use_the_same_empirical_kernel_layout(tmp_path):
    """Fuzz find: with the empirical kernel, check used the full (N K)^2 kernel (lr* 0.4196,
    DGD at 0.44 outside) and ntkdyn predict the traced one (lr* 0.462, status ok) of the
    same configuration.  Both now take Experiment.full_empirical_kernel's layout and say
    which; their lr* agree."""
    from ntkdyn.config.schema import load_config
    from ntkdyn.trajectory import Trajectory

    path = tmp_path / "c.toml"
    path.write_text(_toml(architecture={"depth": 2, "width": 64}, training={"lr": 0.44},
                          prediction={"kernel": "empirical"}))
    rep = check(load_config(path))
    assert rep.kernel_layout == "full" and not rep.inside
    assert main(["predict", str(path), "--out", str(tmp_path / "out"), "--quiet"]) == 0
    traj = Trajectory.load(tmp_path / "out" / "trajectory.npz")
    assert traj.metadata["kernel_layout"] == "full" and traj.status == "unstable"
    lr_star = traj.metadata["stability"]["lr_star"]
    assert lr_star == pytest.approx(rep.stability[0].lr_star, rel=1e-9)
    assert "full (N K) x (N K) layout" in traj.summary()


def test_minibatch_sequences_that_grow_make_check_exit_1(lr_stars):
    """ATC at 0.95 lr* with batches of 2: the full-batch dynamics converge, the 8 sampled
    SGD sequences blow up (train loss ~1e9); check said exit 0.  The mini-batch band's own
    status now counts: exit 1, and the band says how many sequences grew."""
    rep = check(_cfg(training={"algorithm": "atc", "lr": 0.95 * lr_stars["atc"],
                               "batch_size": 2, "samples": 8},
                     prediction={"target_loss": 0.2, "f0": "mean"}))
    assert rep.inside and rep.prediction["status"] == "ok"  # full batch
    assert rep.minibatch["status"] == "unstable" and rep.exit_code == 1
    assert "sampled mini-batch sequences ended above their initial loss" in \
        rep.minibatch["growing"]
    assert rep.minibatch["growing"] in rep.text()
    jsonschema.validate(json.loads(rep.to_json()), SCHEMA)


def test_a_search_cut_short_by_its_product_budget_is_said_in_the_report(monkeypatch):
    """Where a Krylov radius of the stable-set search exceeds its product budget the report
    says so under the verdict (and the JSON's ``method``), instead of running for
    minutes (``dynamics.stability.SEARCH_PRODUCTS``)."""
    from ntkdyn.dynamics import stability

    monkeypatch.setattr(stability, "DENSE_MAX", 10)
    monkeypatch.setattr(stability, "SEARCH_PRODUCTS", 150)
    raw = json.loads(json.dumps(BASE))
    raw["topology"] = {"sequence": ["ring", "star"]}
    rep = check(config_from_dict(raw))
    parts = [p for v in rep.stability for p in v.method.split("; ") if "Krylov products" in p]
    assert parts and "search cut short: " in rep.text()
    assert all(p in rep.text() for p in parts)
