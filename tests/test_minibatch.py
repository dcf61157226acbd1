"""Mini-batch SGD in kernel space (issue 15): sampled batch sequences side by side.

1. :class:`ntkdyn.minibatch.BatchSequence` draws without replacement within each epoch,
   reproducibly per (seed, sequence), and the trainer draws the same batches.
2. Sequence ``s`` of the prediction equals the linearised network trained on the same
   batches in parameter space, to <= 1e-8 relative (observed ~1e-14): a plain numpy
   loop (DGD, ATC; squared loss and cross-entropy) and :func:`ntkdyn.training.trainer.train`
   (``model="linearised"``, float64; DGD, ATC, gradient tracking, P2PL).
3. Squared loss: ``.expected`` is full-batch training (to 1e-12); with independent draws
   (``batch_sampling="independent"``) the sample mean of the outputs approaches it like
   ``samples^-1/2`` (fitted slope in [-0.75, -0.3]); with epoch draws (without
   replacement within an epoch) it does not: a bias of order ``lr^2`` remains
   (``theory/minibatch_sgd.md`` section 3).
4. Invalid inputs are ``ValueError`` / ``ConfigError`` naming the field.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import TINY_TOML, make_linearised_net, rel_err

import ntkdyn as nd
from ntkdyn import graphs
from ntkdyn.cli import main
from ntkdyn.config.experiment import from_config
from ntkdyn.config.schema import ConfigError, config_from_dict, load_config
from ntkdyn.minibatch import BatchSequence
from ntkdyn.prediction import predict_from_kernels
from ntkdyn.training.trainer import train

TOL = 1e-8
RING = graphs.mixing(graphs.topology("ring", 4))


@pytest.fixture(scope="module")
def net():
    return make_linearised_net(n=22, n_test=8, seed=4)  # shards 6, 6, 5, 5


# --------------------------------------------------------------------------- 1. batches
def test_batches_are_without_replacement_within_an_epoch_and_reproducible():
    counts = (7, 9, 6)
    seq = BatchSequence(counts, 3, seed=11)
    m = seq.epoch_draws  # 2, 3, 2 draws per epoch
    draws = [seq.indices(d) for d in range(12)]
    for q, n_q in enumerate(counts):
        for e in range(3):
            within = np.concatenate([draws[e * m[q] + j][q] for j in range(m[q])])
            assert len(set(within.tolist())) == len(within) == m[q] * 3  # no repeats
            assert within.min() >= 0 and within.max() < n_q
    assert all(np.array_equal(a, b) for a, b in zip(seq.indices(5), draws[5], strict=True))
    other = BatchSequence(counts, 3, seed=11).indices(5, sample=1)
    assert any(not np.array_equal(a, b) for a, b in zip(other, draws[5], strict=True))
    # P2PL with 4 local steps: step t's j-th draw is draw 4 t + j
    assert all(np.array_equal(a, b) for a, b in
               zip(seq.indices(2, grads_per_step=4, j=1), seq.indices(9), strict=True))


# --------------------------------------------------------------------------- 2. exactness
def _softmax(z):
    p = np.exp(z - z.max(axis=-1, keepdims=True))
    return p / p.sum(axis=-1, keepdims=True)


def _sgd_reference(net, w, lr, algorithm, steps, batch, seed, sample, loss):
    """Linearised net trained in parameter space on the batches of ``sample`` (numpy)."""
    q_count, k = w.shape[0], net.y.shape[1]
    seq = BatchSequence(tuple(int(np.sum(net.agent == q)) for q in range(q_count)), batch,
                        seed)
    members = [np.flatnonzero(net.agent == q) for q in range(q_count)]
    p = net.jac.shape[1]
    th, thc = np.zeros((q_count, p)), np.zeros(p)

    def out_grad(f, y):
        return _softmax(f) - y if loss == "cross_entropy" else f - y

    def grad(q, delta, idx):
        rows = (idx[:, None] * k + np.arange(k)).ravel()
        f = net.f0.ravel()[rows] + net.jac[rows] @ delta
        return net.jac[rows].T @ out_grad(f.reshape(-1, k), net.y[idx]).ravel() / batch

    out, out_t, pdist, cdist = [], [], [], []
    for t in range(steps + 1):
        out.append(np.stack([net.outputs(th[q]) for q in range(q_count)]))
        out_t.append(np.stack([net.outputs(th[q], test=True) for q in range(q_count)]))
        pdist.append(np.linalg.norm(th, axis=1))
        cdist.append(np.linalg.norm(th - thc, axis=1))
        idx = [members[q][b] for q, b in enumerate(seq.indices(t, sample))]
        if algorithm == "dgd":
            th = w @ th - lr * np.stack([grad(q, th[q], idx[q]) for q in range(q_count)])
        else:  # atc
            th = w @ (th - lr * np.stack([grad(q, th[q], idx[q]) for q in range(q_count)]))
        thc = thc - lr * sum(grad(q, thc, idx[q]) for q in range(q_count)) / q_count
    return {"train_outputs": np.stack(out), "test_outputs": np.stack(out_t),
            "param_dist": np.stack(pdist), "central_dist": np.stack(cdist)}


@pytest.mark.parametrize("loss", ["mse", "cross_entropy"])
@pytest.mark.parametrize("algorithm", ["dgd", "atc"])
def test_sequence_equals_numpy_sgd_on_the_same_batches(net, algorithm, loss):
    steps = 14  # several epochs (3 draws of 2 per epoch on shards of 6, 2 on 5)
    pred = predict_from_kernels(net.kernel_full, net.y, net.agent, RING, 0.3, steps,
                                algorithm, f0_train=net.f0, kernel_test_train=net.kernel_test_full,
                                y_test=net.y_test, f0_test=net.f0_test, record_outputs=True,
                                loss=loss, batch_size=2, samples=3, seed=5)
    assert pred.samples == 3 and pred.metadata["sampled"] == "mini-batch"
    for s in range(3):
        ref = _sgd_reference(net, RING, 0.3, algorithm, steps, 2, 5, s, loss)
        seq = pred.sequence(s)
        for key, val in ref.items():
            assert rel_err(getattr(seq, key), val) <= TOL, (s, key)
        assert seq.param_dist[-1].min() > 0.1
    full = predict_from_kernels(net.kernel_full, net.y, net.agent, RING, 0.3, steps, algorithm,
                                f0_train=net.f0, loss=loss, record_outputs=True)
    assert rel_err(pred.sequence(0).train_outputs, full.train_outputs) > 1e-3  # not full batch


@pytest.fixture(scope="module")
def parts4():
    data = nd.data.digits(classes=range(3), n_train=62, n_test=30, seed=0)
    return nd.data.partition(data, agents=4, scheme="iid", seed=0)  # shards 16, 16, 15, 15


METRICS = ("train_loss", "test_loss", "local_loss", "objective", "train_acc", "test_acc",
           "param_dist", "consensus_dist", "central_dist", "central_train_loss",
           "central_test_loss", "mean_model_train_loss", "train_outputs", "test_outputs")


@pytest.mark.parametrize("algorithm, loss, sample", [
    ("dgd", "mse", 0), ("dgd", "cross_entropy", 2), ("atc", "mse", 2),
    ("atc", "cross_entropy", 0), ("gradient_tracking", "mse", 1), ("p2pl", "mse", 1),
])
def test_sequence_equals_linearised_training_on_the_same_batches(parts4, algorithm, loss,
                                                                  sample):
    arch = nd.models.MLP(hidden=(32, 32), out=3)
    params = nd.init_params(arch, parts4.dataset.dim, seed=0)
    algo = nd.algorithms.p2pl(3, 1) if algorithm == "p2pl" else algorithm
    steps = range(0, 21, 5)  # 20 steps: several epochs of 3 draws of 5
    pred = nd.predict(arch, parts4, RING, 0.5, algo, steps, kernel="empirical", traced=False,
                      params=params, f0="network", record_outputs=True, batch_size=5,
                      samples=3, seed=7, loss=loss)
    obs = train(arch, parts4, RING, 0.5, algo, steps, params0=params, model="linearised",
                dtype="float64", record_outputs=True, batch_size=5, seed=7,
                batch_sample=sample, loss=loss)
    seq = pred.sequence(sample)
    np.testing.assert_array_equal(obs.steps, seq.steps)
    scale = np.max(seq.param_dist)
    for m in METRICS:
        ref = getattr(seq, m)
        err = np.max(np.abs(getattr(obs, m) - ref)) / (
            scale if m.endswith("_dist") else max(np.max(np.abs(ref)), 1e-300))
        assert err <= TOL, m
    other = pred.sequence((sample + 1) % 3)
    assert rel_err(other.train_outputs, obs.train_outputs) > 1e-4  # another sequence differs
    assert "sequence" in " ".join(obs.metadata["notes"])


# --------------------------------------------------------------------------- 3. expectation
def test_expected_is_full_batch_and_the_sample_mean_approaches_it(net):
    """Independent draws: the mean state is full-batch training (exact), so the sample mean
    of the outputs converges to it at the Monte-Carlo rate."""
    kw = dict(f0_train=net.f0, kernel_test_train=net.kernel_test_full, y_test=net.y_test,
              f0_test=net.f0_test, record_outputs=True)
    steps = range(0, 21, 4)
    full = predict_from_kernels(net.kernel_full, net.y, net.agent, RING, 0.3, steps, "atc",
                                **kw)
    sizes = (4, 16, 64, 256)
    errs = []
    for samples in sizes:
        e = []
        for seed in range(4):
            pred = predict_from_kernels(net.kernel_full, net.y, net.agent, RING, 0.3, steps,
                                        "atc", batch_size=2, samples=samples, seed=seed,
                                        batch_sampling="independent", **kw)
            if samples == sizes[0] and seed == 0:
                for m in ("train_outputs", "test_outputs", "param_dist", "central_dist",
                          "test_loss"):
                    assert rel_err(getattr(pred.expected, m), getattr(full, m)) <= 1e-12, m
            e.append(np.sqrt(np.mean((pred.train_outputs - full.train_outputs)[1:] ** 2)))
        errs.append(np.mean(e))
    slope = np.polyfit(np.log(sizes), np.log(errs), 1)[0]
    assert -0.75 <= slope <= -0.3, (slope, errs)
    assert errs[-1] < errs[0] / 4


def test_band_sequence_and_save_roundtrip(net, tmp_path):
    pred = predict_from_kernels(net.kernel_full, net.y, net.agent, RING, 0.3, range(0, 11, 5),
                                "dgd", f0_train=net.f0, kernel_test_train=net.kernel_test_full,
                                y_test=net.y_test, f0_test=net.f0_test, batch_size=3,
                                samples=20, seed=1)
    lo, hi = pred.band("test_loss", 0.05, 0.95)
    assert lo.shape == hi.shape == pred.test_loss.shape
    assert np.all(lo <= hi) and np.all(hi[1:] - lo[1:] > 0)
    per = pred.per_sample["test_loss"]
    assert per.shape == (20,) + pred.test_loss.shape
    np.testing.assert_allclose(per.mean(axis=0), pred.test_loss, rtol=1e-14)
    assert "mini-batch SGD (batch 3)" in pred.summary()
    back = nd.Trajectory.load(pred.save(tmp_path / "t.npz"))
    np.testing.assert_array_equal(back.sequence(4).test_loss, pred.sequence(4).test_loss)
    ce = predict_from_kernels(net.kernel_full, net.y, net.agent, RING, 0.3, range(0, 11, 5),
                              "dgd", f0_train=net.f0, batch_size=3, samples=4,
                              loss="cross_entropy")
    assert ce.expected is None and "no closed-form expectation" in ce.summary()


# --------------------------------------------------------------------------- 4. errors
@pytest.mark.parametrize("kwargs, needle", [
    (dict(batch_size=-1), "batch_size: expected an integer >= 0"),
    (dict(batch_size=2.5), "batch_size: expected an integer >= 0"),
    (dict(batch_size=True), "batch_size: expected an integer >= 0"),
    (dict(batch_size=6), r"batch_size: expected at most the smallest shard, 5 samples"),
    (dict(batch_size=2, samples=0), "samples: expected an integer >= 1"),
    (dict(batch_size=2, samples=1.5), "samples: expected an integer >= 1"),
    (dict(samples=4), "samples: only for a random mixing sequence .* or mini-batch SGD"),
    (dict(batch_size=2, continuous=True), "continuous: the gradient flow is for full-batch"),
    (dict(batch_size=2, seed=1.5), "seed: expected an integer"),
    (dict(batch_size=2, batch_sampling="shuffle"), "batch_sampling: expected one of"),
])
def test_invalid_inputs_name_the_field(net, kwargs, needle):
    with pytest.raises(ValueError, match=needle):
        predict_from_kernels(net.kernel_full, net.y, net.agent, RING, 0.3, 5, "dgd", **kwargs)


def test_trainer_and_rank_refuse_bad_batch_sizes(parts4):
    arch = nd.models.MLP(hidden=(8,), out=3)
    with pytest.raises(ValueError, match="batch_size: expected at most the smallest shard, 15"):
        train(arch, parts4, RING, 0.1, "dgd", 5, batch_size=16)
    with pytest.raises(ValueError, match="batch_sample: expected an integer >= 0"):
        train(arch, parts4, RING, 0.1, "dgd", 5, batch_size=4, batch_sample=-1)
    with pytest.raises(ValueError, match="rank: the low-rank path takes full-batch"):
        nd.predict(arch, parts4, RING, 0.1, "dgd", 5, batch_size=4, rank=8)


# --------------------------------------------------------------------------- TOML and CLI
def _raw(extra_training: str = "", extra: str = "") -> dict:
    import tomllib

    return tomllib.loads(TINY_TOML.replace("record_every = 10",
                                           "record_every = 10\n" + extra_training) + extra)


@pytest.mark.parametrize("training, extra, needle", [
    ("batch_size = -2", "", "training.batch_size: expected a value >= 0"),
    ("batch_size = 2.0", "", "training.batch_size: expected an integer"),
    ("batch_size = 4\nsamples = 0", "", "training.samples: expected a value > 0"),
    ("samples = 8", "", "training.samples: only used with training.batch_size > 0"),
    ('batch_sampling = "independent"', "", "training.batch_sampling: only used with"),
    ('batch_size = 4\nbatch_sampling = "x"', "", "training.batch_sampling: expected one of"),
    ("batch_size = 4\ncontinuous = true", "", "training.batch_size: mini-batch SGD runs "
                                               "discrete steps"),
    ("", "[validation]\nbatch_size = 8\n", "validation.batch_size: replaced by "
                                            "training.batch_size"),
])
def test_config_errors_name_the_key(training, extra, needle):
    with pytest.raises(ConfigError, match=needle):
        config_from_dict(_raw(training, extra))


def test_config_batch_size_larger_than_a_shard_names_the_key():
    cfg = config_from_dict(_raw("batch_size = 21"))  # 60 samples on 3 agents: shards of 20
    with pytest.raises(ConfigError, match="config: training.batch_size: expected at most the "
                                          "smallest shard, 20"):
        from_config(cfg)


def test_cli_predict_plots_the_band_and_check_takes_it(tmp_path, capsys):
    cfg = tmp_path / "c.toml"
    cfg.write_text(TINY_TOML.replace("record_every = 10",
                                     "record_every = 10\nbatch_size = 5\nsamples = 8"))
    out = tmp_path / "out"
    assert main(["predict", str(cfg), "--out", str(out), "--quiet"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    mb = summary["minibatch"]
    assert mb["batch_size"] == 5 and mb["samples"] == 8 and mb["seed"] == 1
    lo, hi = mb["final_test_loss_band_5_95_network_mean"]
    assert lo <= summary["final_test_loss_mean"] <= hi
    assert summary["config"]["training"]["samples"] == 8
    traj = nd.Trajectory.load(out / "trajectory.npz")
    # the default is now one random network: network s draws f0 s and batch sequence s (8 of
    # them, training.samples); the mean network (f0 = 0) keeps the full-batch expected run
    assert traj.samples == 8 and traj.mean_network.expected is not None
    assert traj.metadata["band_over"] == "init+batch"
    assert (out / "trajectory.png").stat().st_size > 20_000
    assert "mini-batch SGD (batch 5)" in capsys.readouterr().out
    # check now takes mini-batch SGD (it refused it before issue 15's check part)
    assert main(["check", str(cfg), "--quiet"]) in (0, 1)
    assert "Mini-batch SGD (batch size 5): stability, lr*" in capsys.readouterr().out
    assert load_config(cfg).training.batch_size == 5


def test_validate_trains_on_the_batches_of_sequence_0(tmp_path):
    text = TINY_TOML.replace("record_every = 10", "record_every = 10\nbatch_size = 6\n"
                             "samples = 16").replace("width = 64", "width = 128")
    cfg = tmp_path / "c.toml"
    cfg.write_text(text + '[validation]\ndtype = "float64"\n')
    res = nd.validate(cfg, kernels="empirical")
    run = res.runs[0]
    pred = run.predicted["empirical"]
    assert pred.samples == 1 and pred.metadata["minibatch"]["seed"] == 1
    assert run.linearised.metadata["training"]["batch_size"] == 6
    # float64 linearised training on sequence 0 == sequence 0's (full empirical kernel) one
    assert run.agreement["linearised vs empirical"]["metrics"]["test_loss"]["mean"] < 1e-8
    assert "mini-batch SGD, batch 6 (sequence 0" in res.summary()
