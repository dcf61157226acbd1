"""`ntkdyn check` with ``[prediction] rank`` and cross-entropy (issues 15 and 17): the exact
cross-entropy check's statements (the step linearised at f_0, the sufficient bound from the
largest softmax curvature, the sweep, the chosen rate's prediction, no fixed point) computed
on the truncated operator, labelled low-rank; at rank N they are the exact check's."""

import dataclasses
import json

import jsonschema
import numpy as np
import pytest
from test_preflight import SCHEMA, _cfg

from ntkdyn import lowrank
from ntkdyn.config.experiment import from_config
from ntkdyn.config.schema import ConfigError
from ntkdyn.dynamics import ce_stability
from ntkdyn.lowrank.cross_entropy import lowrank_ce_stability
from ntkdyn.prediction import build_problem
from ntkdyn.preflight import check

CE = {"loss": "cross_entropy", "logit_scale": 2.0, "lr": 0.5}
N = 48  # BASE of test_preflight: 48 training samples, 4 agents, K = 3
TOL = 1e-8  # float64 on both paths (the exact check with kernel_dtype = "float64")


def _rel(a, b):
    return abs(a - b) / max(abs(b), 1e-300)


def test_full_rank_cross_entropy_check_equals_the_exact_check():
    """rank = N: verdicts (lr*, spectral radius, sufficient bound, inside), every sweep
    rate's losses and accuracies, the chosen rate's prediction and the recommendation equal
    the exact cross-entropy check's to 1e-8 relative (measured ~1e-14: a rank-N Nystrom
    factor reproduces the kernel to 1e-14); no fixed point, as on the exact path."""
    exact = check(_cfg(training=CE, prediction={"f0": "mean", "kernel_dtype": "float64"}))
    low = check(_cfg(training=CE, prediction={"f0": "mean", "rank": N}))
    assert low.low_rank["rank"] == N and low.loss == "cross_entropy"
    assert low.low_rank["error_estimate"] is None
    assert [v.algorithm for v in low.stability] == [v.algorithm for v in exact.stability]
    for e, v in zip(exact.stability, low.stability, strict=True):
        for key in ("lr_star", "spectral_radius", "lr_bound"):
            assert _rel(getattr(v, key), getattr(e, key)) <= TOL, (v.algorithm, key)
        assert v.inside == e.inside and v.note == e.note
        assert f"low-rank (rank {N})" in v.method and "truncated kernel" in v.operator
    assert len(low.sweep) == len(exact.sweep) == 10
    for e, v in zip(exact.sweep, low.sweep, strict=True):
        for key in ("lr", "final_train_loss", "final_test_loss", "final_test_acc",
                    "final_consensus_dist"):
            assert _rel(v[key], e[key]) <= TOL, key
        assert v["steps_to_target"] == e["steps_to_target"]
    for key in ("final_train_loss", "final_test_loss", "final_train_acc", "final_test_acc",
                "final_consensus_dist"):
        assert _rel(low.prediction[key], exact.prediction[key]) <= TOL, key
    assert low.prediction["steps_to_target"] == exact.prediction["steps_to_target"]
    assert low.prediction["steady_state_note"] == exact.prediction["steady_state_note"] \
        == ce_stability.NO_FIXED_POINT
    assert _rel(low.recommended["lr"], exact.recommended["lr"]) <= TOL
    text = low.text()
    assert "LOW-RANK verdict" in text and "rank-48 coordinates" in text
    assert "steady state: none (cross-entropy on separable data" in text
    assert f"every rate on the one rank-{N} factor" in text
    assert "are those of the truncated kernel" in low.caveat
    jsonschema.validate(json.loads(low.to_json()), SCHEMA)


def test_truncated_cross_entropy_verdicts_bound_the_exact_ones_and_random_network():
    """Rank 8 < N: every lr* is >= the exact check's (the truncated operator's lr* bounds
    the full one's from above for DGD/ATC/CTA, symmetric W; 1e-9 slack) and the report
    says the verdicts are of the truncated operator; with the default f0 (one random
    network) the chosen rate's band over sampled networks is reported (its draws come from
    the rank-8 NNGP factor, not the exact path's draws: not compared number for number)."""
    exact = check(_cfg(training=CE, prediction={"f0": "mean"}))
    low = check(_cfg(training=CE, prediction={"rank": 8, "samples": 3}))
    lr_exact = {v.algorithm: v.lr_star for v in exact.stability}
    for v in low.stability:
        assert v.lr_star >= lr_exact[v.algorithm] * (1 - 1e-9), v
    one = low.prediction["one_random_network"]
    assert one is not None and one["samples"] == 3
    lo, hi = one["final_test_loss_band"]
    assert lo <= hi and np.isfinite(one["final_test_loss_expected"])
    assert "truncated operator" in low.low_rank["verdicts"]
    assert "one random network (over 3 sampled initialisations, as ntkdyn predict)" in low.text()
    # the f0 = 0 run beside it is not called the mean network with cross-entropy
    assert "network from f0 = 0 (cross-entropy: not the mean network): train loss" \
        in low.text() and "mean network (f0 = 0)" not in low.text()


def test_linearised_stability_at_network_outputs_equals_the_exact_path():
    """At f_0 != 0 (the empirical kernel's network, or any given outputs) the low-rank
    operator is built on the N K x r K factor sqrt(K) G (Phi (x) I_K): at rank N its lr*,
    spectral radius and sufficient bound equal ce_stability.stability on the exact
    problem with the same f_0 to 1e-8 (measured ~1e-15)."""
    cfg = _cfg(training=CE)
    exp = from_config(cfg)
    problem = build_problem(exp.arch, exp.parts, exp.mixing, f0="zero", loss="cross_entropy",
                            logit_scale=2.0)
    f0 = np.random.default_rng(0).normal(size=problem.f0_train.shape)
    problem = dataclasses.replace(problem, f0_train=f0)
    agent = np.repeat(np.arange(problem.num_agents), problem.counts)  # sorted by agent
    factor = lowrank.factorize(lowrank.kernel_columns(problem.kernel), rank=N)
    for algo in ("dgd", "atc"):
        e = ce_stability.stability(problem, algo, 0.5)
        v = lowrank_ce_stability(factor, agent, problem.mixing, algo, 0.5, logit_scale=2.0,
                                 f0_train=f0)
        for key in ("lr_star", "spectral_radius", "lr_bound"):
            assert _rel(getattr(v, key), getattr(e, key)) <= TOL, (algo, key)
        assert "initial outputs f_0" in v.note and "K-output" in v.operator
    with pytest.raises(ValueError, match="num_outputs"):
        lowrank_ce_stability(factor, agent, problem.mixing, "dgd", 0.5)


def test_rank_auto_with_cross_entropy_is_refused_naming_the_field():
    with pytest.raises(ConfigError, match="prediction.rank: 'auto'.*integer prediction.rank"):
        check(_cfg(training=CE, prediction={"rank": "auto"}))


def test_feature_operator_above_dense_max_uses_arpack():
    """Q r > DENSE_MAX (1500): the feature operator's spectral radius went through the
    inherited structured (shift-invert) path, which reads the kernel's row blocks, and
    failed with an AttributeError (``_structure``; met by ``check`` at rank 256 with 8
    agents); it now falls back to ARPACK and agrees with the dense radius to 1e-8."""
    from ntkdyn import graphs
    from ntkdyn.algorithms import get_algorithm
    from ntkdyn.lowrank.factor import LowRankFactor
    from ntkdyn.lowrank.stability import FeatureProblem, FeatureStepOperator

    rng = np.random.default_rng(1)
    n, r, q = 400, 380, 4
    phi = rng.normal(size=(n, r)) / np.sqrt(r)
    factor = LowRankFactor(phi=phi, phi_test=None, eigenvalues=np.ones(r),
                           landmarks=np.arange(r), method="given", trace=float(np.sum(phi**2)),
                           residual_trace=0.0, next_eigenvalue=0.0)
    w = graphs.mixing(graphs.topology("ring", q))
    op = FeatureStepOperator(FeatureProblem(factor, np.arange(n) % q, w),
                             get_algorithm("dgd"))
    assert op.dim > 1500
    auto, dense = op.spectral_radius(0.3), op.spectral_radius(0.3, method="dense")
    assert abs(auto - dense) <= 1e-8 * dense


@pytest.mark.parametrize("topology", [
    {"sequence": ["ring", "complete"]},
    {"name": "ring", "gossip": "edges", "gossip_p": 0.5, "gossip_samples": 2},
], ids=["periodic", "random-gossip"])
def test_full_rank_cross_entropy_check_with_a_mixing_sequence_equals_the_exact_check(topology):
    """A periodic mixing sequence (ring, complete) and random gossip: the low-rank
    cross-entropy check runs (both were refused, naming prediction.rank; the periodic one
    until stop 27, random gossip until stop 28) and at rank N its verdicts (one period's
    operator per step; E[W]), sweep and prediction (random gossip: means over the
    configured sequences) are the exact check's to 1e-8."""
    from test_preflight import BASE

    from ntkdyn.config.schema import config_from_dict

    def cfg(prediction):
        raw = json.loads(json.dumps(BASE))
        raw["topology"] = topology
        raw["training"].update(CE)
        raw["prediction"].update(prediction)
        return config_from_dict(raw)

    exact = check(cfg({"f0": "mean", "kernel_dtype": "float64"}))
    low = check(cfg({"f0": "mean", "rank": N}))
    for e, v in zip(exact.stability, low.stability, strict=True):
        for key in ("lr_star", "spectral_radius"):
            assert _rel(getattr(v, key), getattr(e, key)) <= TOL, (v.algorithm, key)
        assert v.inside == e.inside
    assert len(low.sweep) == len(exact.sweep) == 10
    for e, v in zip(exact.sweep, low.sweep, strict=True):
        for key in ("lr", "final_test_loss", "final_test_acc"):
            assert _rel(v[key], e[key]) <= TOL, key
    for key in ("final_train_loss", "final_test_loss", "final_consensus_dist"):
        assert _rel(low.prediction[key], exact.prediction[key]) <= TOL, key
