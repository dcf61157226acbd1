r"""Softmax cross-entropy on the low-rank path (issues 15 and 17).

Mathematics (``theory/low_rank.md``, ``theory/cross_entropy.md``).  With
``Theta ~ Phi Phi^T`` (``Phi`` N x r) agent ``q``'s outputs are ``f_q = f_0 + Phi a_q``,
``a_q = Phi^T alpha_q`` (r x K), and the cross-entropy gradient of
``L_q = (1/N_q) sum_{i in q} CE(softmax(s f(x_i)), y_i)`` in these coordinates is

    ``grad_q = (1/N_q) Phi_q^T g_q``,   ``g_q = s (softmax(s f_q[S_q]) - Y_q)``

(``s = logit_scale``), so DGD is ``a_q <- sum_p W_qp a_p - (eta_q/N_q) Phi_q^T g_q`` and every
schedule of :mod:`ntkdyn.algorithms` runs on these operators unchanged.  The gradient is not
affine in ``a_q``: the Gram form of :mod:`ntkdyn.lowrank.evolve` (``r x r`` matrices per
agent) does not apply, and each step reads the agents' rows ``Phi_q`` twice (``Phi_q a_q``,
then ``Phi_q^T g_q``): ``4 N r K`` flops, ``8 N r K`` with the centralised reference (its
``K`` columns ride along in the same reads, gradient ``sum_q Phi_q^T g_q(a_c) / (Q N_q)``).
For a kernel of rank ``<= r`` this is the exact path's cross-entropy recursion
(:mod:`ntkdyn.dynamics.solver`) mapped by ``a = Phi^T alpha``.

Records (the exact path's conventions): the trained loss (cross-entropy) on the pooled
training and test sets, the objective, each agent's local loss and the accuracies need the
outputs ``f_0 + Phi a`` of every slot (``(Q + 2) N r K`` flops per record, all rows: the loss
is not a quadratic form); the distances are the squared loss's, ``||a_q||_F`` and the like.

Not carried over from the squared loss: the a-priori truncation-error estimate (it bounds
the squared loss's affine dynamics, not these; ``metadata["low_rank"]["error_estimate"]`` is
``None`` with the reason), hence ``rank="auto"`` / ``tol``; ``acc_rows`` (the loss needs
every output anyway).

One random network (:func:`predict_random_lowrank_ce`): the squared loss's ``K + P``
shared columns rest on its linearity in ``f_0``; with cross-entropy each sampled network
gets ``K`` columns of its own, as on the exact path (:mod:`ntkdyn.dynamics.random_init`,
"Independent networks"): ``P + 1`` groups (the ``P`` networks, then ``f_0 = 0``), the
draws those of the squared loss's low-rank path (:mod:`ntkdyn.lowrank.networks`, ``P K``
columns).  Stability: the exact path's cross-entropy statement, the sufficient bound
from the largest softmax curvature ``s^2/2``, on the truncated operator
(:func:`stability_note`).

Mixing: a static ``W`` or a **periodic** sequence (:func:`ntkdyn.graphs.periodic`; the
combine of step ``k`` uses the cycle's matrices of events ``k m .. k m + m - 1`` inside the
loop, :func:`ntkdyn.graphs.sequences.groups_mixing_at`, one group: every column shares the
sequence).  **Random** gossip (:func:`predict_lowrank_ce_gossip`): the ``S`` sampled
sequences and the ``E[W]`` run side by side as ``G = S + 1`` groups of ``K`` columns, each
group mixed by its own matrix (:func:`ntkdyn.lowrank.gossip.mix_groups`), the softmax over
each group's columns: every group is its own nonlinear run, sharing the reads of ``Phi_q``
(``4 N r G K`` flops per step).  ``.expected`` is the run with ``E[W]``: with cross-entropy
not the expected trajectory (the dynamics are not affine in ``W``).  One random network on
random gossip: ``2 P + 1`` groups, network ``s`` on sequence ``s``
(:func:`_random_networks_gossip`).
"""

from __future__ import annotations

import dataclasses
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from ntkdyn._utils import memory
from ntkdyn._utils.checks import check_f0_pair
from ntkdyn.algorithms import Algorithm, Operators, get_algorithm
from ntkdyn.engine import scan_records
from ntkdyn.graphs.sequences import (
    groups_mixing_at,
    process_arrays,
    process_metadata,
    supported_sampler,
)
from ntkdyn.losses import check_logit_scale, class_targets, sample_loss
from ntkdyn.lowrank.evolve import (
    DIVERGENCE_FACTOR,
    check_lrs,
    check_rate_block,
    divergence_check,
    lowrank_inputs,
    records_trajectory,
    run_features,
    scale_rates,
    schedule_metadata,
    slot_rates,
    step_data,
)
from ntkdyn.lowrank.factor import LowRankFactor
from ntkdyn.lowrank.gossip import (
    mix_groups,
    process_groups,
    sweep_columns,
    sweep_trajectories,
)
from ntkdyn.trajectory import CE_ZERO_WORDS, Trajectory

EXACT = jax.lax.Precision.HIGHEST

#: why ``metadata["low_rank"]["error_estimate"]`` is ``None`` with cross-entropy
NO_ESTIMATE = ("the a-priori truncation-error estimate (theory/low_rank.md section 3) is "
               "derived for the squared loss's affine dynamics and does not bound "
               "cross-entropy's; compare with the exact path (rank=None) on a subset, or "
               "with a larger rank")


def _softmax_grad(f, y, scale, k: int):
    """``s (softmax(s f) - y)`` over groups of ``k`` consecutive columns of ``f``."""
    shape = f.shape
    p = jax.nn.softmax(scale * f.reshape(shape[:-1] + (shape[-1] // k, k)), axis=-1)
    return scale * (p.reshape(shape) - y)


def ce_operators(data: dict, q_count: int, central: bool,
                 classes: int | None = None, w_at=None) -> Operators:
    """The primitives on the feature-space state ``x`` ``(A, r, C)`` with the cross-entropy
    gradient (module docstring).  ``data["phi"]``, ``data["f0"]``, ``data["y"]``: the
    agents' rows, initial outputs and one-hot targets, ``(Q, n_max, C)`` zero padded
    (padded rows have ``Phi = 0`` and add nothing); ``data["inv_n"]`` ``1/N_q``.  The
    softmax is over groups of ``classes`` consecutive columns (default ``C``: one network;
    one random network runs ``C = (P + 1) K`` columns, :func:`predict_random_lowrank_ce`).
    ``w_at``: ``j -> (G, Q, Q)``, the step's ``j``-th matrix of a mixing sequence for
    each of ``G`` column groups (:func:`~ntkdyn.graphs.sequences.groups_mixing_at`; ``G = 1`` for
    a periodic one, the sampled sequences and ``E[W]`` for a random one, each group of
    ``classes`` columns); default the static ``data["mixing"]``."""
    phi, f0, y, inv_n, w = data["phi"], data["f0"], data["y"], data["inv_n"], data["mixing"]
    scale = data["logit_scale"]

    def mix(x, j=0):
        agents = jnp.tensordot(w, x[:q_count], axes=1, precision=EXACT) if w_at is None \
            else mix_groups(w_at(j), x[:q_count], w_at.neighbours)
        return jnp.concatenate([agents, x[q_count:]], axis=0) if central else agents

    def grad(x):
        c = x.shape[-1]
        xa = x[:q_count]
        rhs = xa if not central else jnp.concatenate(
            [xa, jnp.broadcast_to(x[q_count], xa.shape)], axis=-1)
        reps = 2 if central else 1
        f = jnp.einsum("qnr,qrc->qnc", phi, rhs, precision=EXACT) + jnp.tile(f0, reps)
        g = _softmax_grad(f, jnp.tile(y, reps), scale, c if classes is None else classes)
        back = jnp.einsum("qnr,qnc->qrc", phi, g, precision=EXACT) * inv_n[:, None, None]
        if central:
            gc = jnp.sum(back[..., c:], axis=0, keepdims=True) / q_count
            return jnp.concatenate([back[..., :c], gc], axis=0)
        return back

    return Operators(mix=mix, grad=grad, scale=partial(scale_rates, data["lr"]))


def _loss_acc(out, y, labels, scale, k: int):
    """Per-sample cross-entropy ``(..., n, G)`` and accuracy ``(..., G)`` of the outputs
    ``out`` ``(..., n, G K)``, the softmax over each group of ``k`` columns."""
    g = out.shape[-1] // k
    o = out.reshape(out.shape[:-1] + (g, k))
    ce = sample_loss(o, y.reshape(y.shape[:-1] + (g, k)), "cross_entropy", scale)
    hit = (jnp.argmax(o, axis=-1) == labels[:, None]).astype(out.dtype)
    return ce, jnp.mean(hit, axis=-2)


def _by_group(rec: dict, groups: int) -> dict:
    """Records with a trailing group axis ``G`` -> one network's (``G = 1``), or the mean
    network's (the last group) and ``"networks/<key>"`` with the ``P = G - 1`` sampled
    networks on a trailing axis (:func:`ntkdyn.lowrank.networks.assemble_networks`)."""
    outs = {key: rec.pop(key) for key in ("train_outputs", "test_outputs") if key in rec}
    out = {key: v[..., -1] for key, v in rec.items()}
    if groups > 1:
        out.update({f"networks/{key}": v[..., :-1] for key, v in rec.items()})
    for key, v in outs.items():  # (A, n, G K) -> the last group; the networks (A, n, K, P)
        k = v.shape[-1] // groups
        out[key] = v[..., -k:]
        if groups > 1:
            nets = v[..., :-k].reshape(v.shape[:-1] + (groups - 1, k))
            out[f"networks/{key}"] = jnp.swapaxes(nets, -1, -2)
    return out


def _ce_record(x, data, *, q_count, central, has_test, record_outputs, classes=None,
               split=True):
    """The recorded quantities of slots ``x`` ``(A, r, C)`` (module docstring), for each
    group of ``classes`` columns (default ``C``): ``split`` as :func:`_by_group` (one
    network, or the last group and ``"networks/<key>"``), else every record with a
    trailing group axis ``G`` (the outputs ``(A, n, G K)``; :func:`group_raw`)."""
    a, c, scale = x.shape[0], x.shape[-1], data["logit_scale"]
    k = c if classes is None else classes
    g = c // k
    xa = x[:q_count]
    xm = xa.mean(axis=0)

    def norm(v):  # (..., r, C) -> (..., G)
        return jnp.sqrt(jnp.sum(v.reshape(v.shape[:-1] + (g, k)) ** 2, axis=(-3, -1)))

    slots = jnp.concatenate([x, xm[None]], axis=0)  # slot A: the network-mean model
    if "final_train_only" in data:  # (a key: static) filled in after the run
        rec, out = _nan_train_records(a, q_count, g, x.dtype), None
    else:
        rec, out = _train_records(slots, data, a, q_count, scale, k)
    rec.update(param_dist=norm(x), consensus_dist=norm(xa - xm))
    if central:
        rec["central_dist"] = norm(xa - x[q_count])
    if record_outputs:  # every group's (:func:`_by_group`)
        rec["train_outputs"] = out[:a]
    if has_test:
        out_t = data["f0_test"] + jnp.einsum("nr,ark->ank", data["phi_test"], slots,
                                             precision=EXACT)
        ce_t, acc_t = _loss_acc(out_t, data["y_test"], data["labels_test"], scale, k)
        rec.update(test_loss=ce_t[:a].mean(axis=-2), test_acc=acc_t[:a],
                   mean_model_test_loss=ce_t[a].mean(axis=-2), mean_model_test_acc=acc_t[a])
        if record_outputs:
            rec["test_outputs"] = out_t[:a]
    return _by_group(rec, g) if split else rec


#: the records computed from the training outputs (the costly part of a record:
#: ``2 (A + 1) N r C`` flops), filled in after the run with ``train_records="final"``
TRAIN_RECORDS = ("train_loss", "objective", "local_loss", "train_acc",
                 "mean_model_train_loss", "mean_model_train_acc")


def _train_records(slots, data, a: int, q_count: int, scale, k: int) -> dict:
    """``(records, outputs)``: the records of :data:`TRAIN_RECORDS` from the training
    outputs of ``slots`` (``(A + 1, r, C)``: the slots and the network-mean model),
    trailing group axis, and those outputs ``(A + 1, N, C)``."""
    out = data["f0_all"] + jnp.einsum("nr,arc->anc", data["phi_all"], slots, precision=EXACT)
    ce, acc = _loss_acc(out, data["y_all"], data["labels"], scale, k)
    local = jnp.einsum("ang,nq->aqg", ce[:a], data["shard_weights"], precision=EXACT)
    return {"train_loss": ce[:a].mean(axis=-2), "objective": local.mean(axis=-2),
            "local_loss": jnp.moveaxis(jnp.diagonal(local[:q_count], axis1=0, axis2=1),
                                       -1, 0),
            "train_acc": acc[:a], "mean_model_train_loss": ce[a].mean(axis=-2),
            "mean_model_train_acc": acc[a]}, out


def _nan_train_records(a: int, q_count: int, g: int, dtype) -> dict:
    """:data:`TRAIN_RECORDS` as ``NaN`` (``train_records="final"`` before the last)."""
    nan = jnp.full((a + 1, g), jnp.nan, dtype)
    return {"train_loss": nan[:a], "objective": nan[:a], "local_loss": nan[:q_count],
            "train_acc": nan[:a], "mean_model_train_loss": nan[a],
            "mean_model_train_acc": nan[a]}


def final_train_records(params, data: dict, q_count: int, classes: int) -> dict:
    """:data:`TRAIN_RECORDS` of the final slots ``params`` ``(A, r, G K)``, trailing group
    axis ``G`` (as :func:`_ce_record` with ``split=False``), as numpy arrays."""
    def one(x):
        xm = x[:q_count].mean(axis=0)
        return _train_records(jnp.concatenate([x, xm[None]], axis=0), data, x.shape[0],
                              q_count, data["logit_scale"], classes)[0]
    return {key: np.asarray(v) for key, v in jax.jit(one)(params).items()}


def set_last_train_records(traj: Trajectory, rec: dict, q: int) -> None:
    """Write one group's final :data:`TRAIN_RECORDS` (``rec``: that group's slice of
    :func:`final_train_records`) into the last record of ``traj``."""
    for key in ("train_loss", "objective", "train_acc"):
        getattr(traj, key)[-1] = rec[key][:q]
        central = getattr(traj, f"central_{key}")
        if central is not None:
            central[-1] = rec[key][q]
    traj.local_loss[-1] = rec["local_loss"]
    traj.mean_model_train_loss[-1] = rec["mean_model_train_loss"]
    traj.mean_model_train_acc[-1] = rec["mean_model_train_acc"]


def group_raw(raw: dict, g: int, groups: int) -> dict:
    """Group ``g`` of the unsplit records (:func:`_ce_record` with ``split=False``): the
    trailing group axis indexed, the outputs' ``K`` columns of group ``g`` sliced."""
    out = {}
    for key, v in raw.items():
        if key.endswith("_outputs"):
            k = v.shape[-1] // groups
            out[key] = v[..., g * k:(g + 1) * k]
        else:
            out[key] = v[..., g]
    return out


def _step_operators(data, t, algorithm, q_count, central, classes, sampler) -> Operators:
    """:func:`ce_operators` at step ``t``: with a periodic sequence (``sampler``, its
    arrays in ``data``) the step's matrices, else the static ``W``."""
    w_at = None if sampler is None else groups_mixing_at(
        data, t, sampler=sampler, mixes_per_step=algorithm.mixes_per_step)
    return ce_operators(data, q_count, central, classes, w_at)


@partial(jax.jit, static_argnames=("algorithm", "q_count", "central", "classes", "sampler"))
def ce_init_state(x0, data, *, algorithm, q_count, central, classes=None, sampler=None):
    """The schedule's initial state (memory components) with the cross-entropy gradient."""
    return algorithm.initial_state(x0, _step_operators(
        data, jnp.asarray(0.0), algorithm, q_count, central, classes, sampler))


@partial(jax.jit, static_argnames=("algorithm", "q_count", "central", "has_test",
                                   "record_outputs", "classes", "sampler", "groups"))
def ce_run_chunk(carry, n_steps, data, *, algorithm, q_count, central, has_test,
                 record_outputs, classes=None, sampler=None, groups=None):
    """:func:`ntkdyn.lowrank.evolve.run_chunk` with the cross-entropy operators/records
    (softmax groups of ``classes`` columns, default all; ``sampler``: a mixing sequence's,
    the step's matrices read inside the loop).  ``groups``: the ``G`` column groups of a
    random sequence, each flagged for divergence on its own and recorded unsplit
    (:func:`group_raw`)."""
    params = algorithm.parameters
    checked = divergence_check(params, data["limit_per_step"], groups)

    def record(st, x):
        rec = _ce_record(params(x), data, q_count=q_count, central=central,
                         has_test=has_test, record_outputs=record_outputs, classes=classes,
                         split=groups is None)
        rec["diverged"] = st[2]
        return st, rec

    return scan_records(carry, n_steps, algorithm=algorithm,
                        operators=lambda t: _step_operators(data, t, algorithm, q_count,
                                                            central, classes, sampler),
                        check=checked, record=record)


def ce_mixing(mixing) -> tuple[np.ndarray, object]:
    """``(W, process)``: a static matrix (``process`` ``None``) or a mixing sequence
    (``W`` the average over its period or ``E[W]``, for the inputs' checks and the
    metadata)."""
    from ntkdyn.graphs.sequences import resolve_mixing

    return resolve_mixing(mixing, name="mixing")


def _runner(process, classes: int | None = None, groups: int | None = None) -> tuple:
    """``(init_state, run_chunk)`` of :func:`run_features` for a static ``W`` or a
    mixing sequence (``groups``: a random one's column groups, :func:`ce_run_chunk`)."""
    sampler = None if process is None else supported_sampler(process)
    return (partial(ce_init_state, classes=classes, sampler=sampler),
            partial(ce_run_chunk, classes=classes, sampler=sampler, groups=groups))


def ce_bytes(n: int, n_test: int, rank: int, agents: int, outputs: int, *, padded_rows: int,
             record_outputs: bool = False, records: int = 50) -> int:
    """Peak bytes of :func:`predict_lowrank_ce` besides the factor: the padded agents' rows
    and the sorted copy for the records (``(padded_rows + N + M) r``), ``f_0`` and ``Y``
    padded and sorted, the step's outputs and gradients (``4 padded_rows K``, twice with
    the reference), the records' outputs of every slot (``3 (Q + 2) (N + M) K``) and the
    state; float64."""
    a = agents + 2
    b = (padded_rows + n + n_test) * rank + 12 * padded_rows * outputs + 4 * n * outputs
    b += 3 * a * (n + n_test) * outputs + 9 * a * rank * outputs
    if record_outputs:
        b += records * a * (n + n_test) * outputs
    return int(8 * b)


def _ce_data(factor: LowRankFactor, inp, scale: float,
             reference: bool) -> tuple[dict, int, np.ndarray]:
    """The device data of :func:`predict_lowrank_ce` (rows sorted by agent, stably), the
    padded row count and that sort order; memory checked first."""
    counts = inp.counts
    order = np.argsort(inp.agent, kind="stable")
    offsets = tuple(int(v) for v in np.concatenate([[0], np.cumsum(counts)]))
    n, r = inp.phi.shape
    k, q_count = inp.y.shape[1], inp.w.shape[0]
    n_max = int(counts.max())
    m_test = 0 if inp.yt is None else inp.yt.shape[0]
    memory.ensure_fits(ce_bytes(n, m_test, r, q_count, k, padded_rows=q_count * n_max,
                                records=len(inp.steps)),
                       "this low-rank cross-entropy prediction",
                       "use a smaller rank, fewer test samples, or record_outputs=False")
    phi_s, y_s, f0_s = inp.phi[order], inp.y[order], inp.f0[order]
    blocks = step_data(phi_s, np.concatenate([f0_s, y_s], axis=1), offsets, 1.0 / counts,
                       gram=False, stacked=True, n_max=n_max)
    shard_w = np.zeros((n, q_count))
    for q in range(q_count):
        shard_w[offsets[q]:offsets[q + 1], q] = 1.0 / counts[q]
    lr_q = inp.lr_q
    data = {"phi": blocks["phi"], "f0": blocks["res"][..., :k], "y": blocks["res"][..., k:],
            "inv_n": jnp.asarray(1.0 / counts), "mixing": jnp.asarray(inp.w),
            "lr": jnp.asarray(slot_rates(lr_q, reference)),
            "logit_scale": jnp.asarray(scale),
            "limit_per_step": jnp.asarray(ce_limit(lr_q, phi_s, scale, k, counts)),
            "phi_all": jnp.asarray(phi_s), "f0_all": jnp.asarray(f0_s[None]),
            "y_all": jnp.asarray(y_s), "labels": jnp.asarray(np.argmax(y_s, axis=1)),
            "shard_weights": jnp.asarray(shard_w)}
    if inp.yt is not None:
        data.update(phi_test=jnp.asarray(np.asarray(factor.phi_test, dtype=np.float64)),
                    f0_test=jnp.asarray(inp.ft[None]), y_test=jnp.asarray(inp.yt),
                    labels_test=jnp.asarray(np.argmax(inp.yt, axis=1)))
    return data, q_count * n_max, order


def ce_limit(lr_q: np.ndarray, phi: np.ndarray, scale: float, k: int,
             counts: np.ndarray) -> float:
    """The divergence limit per step of :func:`predict_lowrank_ce`'s state,
    ``DIVERGENCE_FACTOR eta_max s sqrt(max(tr(Phi^T Phi), 1) N K) / min N_q``."""
    curv = float(np.sum(phi ** 2))  # tr(Phi^T Phi): the divergence limit's scale
    return float(DIVERGENCE_FACTOR * lr_q.max() * scale
                 * np.sqrt(max(curv, 1.0) * phi.shape[0] * k) / counts.min())


def _ce_rate_block(inp, rates: int, groups: int, records: int) -> int:
    """The most rates (at least 1, at most ``rates``) of :func:`predict_lowrank_ce_sweep`
    whose ``groups K`` columns each fit in one pass (:func:`ce_bytes`, as :func:`_ce_data`
    then checks; ``inp`` one rate's inputs)."""
    (n, r), k, q_count = inp.phi.shape, inp.y.shape[1], inp.w.shape[0]
    m_test, rows = 0 if inp.yt is None else inp.yt.shape[0], q_count * int(inp.counts.max())

    def need(b):
        return ce_bytes(n, m_test, r, q_count, b * groups * k, padded_rows=rows,
                        records=records)

    return max(1, memory.largest_fitting(need, memory.available_memory_bytes(), rates))


# long unit: checks, blocks of rates, the R G column groups, run, assembly
def predict_lowrank_ce_sweep(
    factor: LowRankFactor, y_train, agent, mixing, lrs, steps,
    algorithm: str | Algorithm = "dgd", *, logit_scale: float = 1.0, f0_train=None,
    y_test=None, f0_test=None, reference: bool = True, chunk: int = 25,
    progress: bool = False, metadata: dict | None = None, samples: int | None = None,
    rate_block: int | None = None, train_records: str = "all",
) -> list[Trajectory]:
    r""":func:`predict_lowrank_ce` at every rate of ``lrs`` (each a scalar or one rate per
    agent) in **one** run: the rates are ``R`` column groups of ``K`` in one state
    ``(A, r, R K)``, each with its own rate per slot and column
    (:func:`ntkdyn.lowrank.evolve.scale_rates`), the softmax over each group's columns,
    divergence flagged per rate: every read of ``Phi_q`` is shared by the rates
    (``4 N r R K`` flops per step, against ``R`` reads of ``Phi`` for ``R`` runs).  With
    random gossip the ``G = samples + 1`` mixing groups (the sampled sequences, then
    ``E[W]``; :func:`predict_lowrank_ce_gossip`) times the rates are ``G R`` column groups,
    mixing group outer (group ``g R + i``: mixing group ``g`` at rate ``i``).
    Trajectory ``i`` equals ``predict_lowrank_ce(..., lr=lrs[i])`` to round-off (status
    and divergence step included; random gossip: the same
    :class:`~ntkdyn.trajectory.GossipTrajectory`); ``ntkdyn check``'s cross-entropy sweep
    on the factor.  ``rate_block``: at most this many rates per pass (default: as many as
    fit in the memory available); the results do not depend on it.
    ``train_records="final"``: the records computed from the training outputs
    (:data:`TRAIN_RECORDS`: training loss, objective, local losses, training accuracy,
    the mean model's) only at the last record, ``NaN`` at the others; they cost
    ``2 (A + 1) N r R K`` flops per record against ``2 (A + 1) M r R K`` for the test
    records (``ntkdyn check``'s sweep, which reports the final training loss and the test
    loss at every record).  For a group that diverged, the last record's training
    records are those of the state it was frozen in.  Cost with random
    gossip (README): the records evaluate every output of every slot and column group,
    ``(A + 1) (N + M) G R K`` numbers per record, and on 2 CPU cores the pass over 10
    rates x 5 groups was 0.82x as fast as one pass per rate (``rate_block=1``, what
    ``ntkdyn check`` runs)."""
    algo = get_algorithm(algorithm)
    scale = check_logit_scale(logit_scale)
    check_lrs(lrs)
    check_rate_block(rate_block)
    if train_records not in ("all", "final"):
        raise ValueError(f"train_records: expected 'all' or 'final', got {train_records!r}")
    y = class_targets("y_train", y_train, None if f0_train is None else np.shape(f0_train)[1])
    k, rates = y.shape[1], len(lrs)
    yt = None if y_test is None else class_targets("y_test", y_test, k)
    w, process = ce_mixing(mixing)
    random = process is not None and process.random
    if not random and samples is not None:
        raise ValueError("samples: only for a random mixing sequence; got "
                         f"samples={samples!r} with a static or periodic one")
    groups, samples = process_groups(process, samples) if random else (1, None)
    inps = [lowrank_inputs(factor, y, agent, w, lr, steps, f0_train, yt, f0_test, None)
            for lr in lrs]
    one = inps[0]
    block = rate_block or _ce_rate_block(one, rates, groups, len(one.steps))
    if block < rates:  # one pass per block of rates, each as below
        call = partial(predict_lowrank_ce_sweep, factor, y_train, agent, mixing,
                       steps=steps, algorithm=algo, logit_scale=scale, f0_train=f0_train,
                       y_test=y_test, f0_test=f0_test, reference=reference, chunk=chunk,
                       progress=progress, metadata=metadata, samples=samples,
                       rate_block=block, train_records=train_records)
        return [t for i in range(0, rates, block) for t in call(lrs=list(lrs[i:i + block]))]
    cols = rates * groups
    inp = dataclasses.replace(one, y=np.tile(one.y, cols), f0=np.tile(one.f0, cols),
                              yt=None if yt is None else np.tile(one.yt, cols),
                              ft=None if yt is None else np.tile(one.ft, cols))
    q_count, r = inp.w.shape[0], inp.phi.shape[1]
    data, rows, order = _ce_data(factor, inp, scale, reference)
    phi_s = inp.phi[order]
    data = sweep_columns(data, np.stack([slot_rates(i.lr_q, reference) for i in inps]),
                         [ce_limit(i.lr_q, phi_s, scale, k, inp.counts) for i in inps], k,
                         groups)
    if process is not None:
        data.update(process_arrays(process, samples))
    if train_records == "final":
        data["final_train_only"] = jnp.zeros(())
    raw, rec_steps, phase, carry = run_features(
        jnp.zeros((q_count + int(reference), r, cols * k)), data, algo, inp.steps,
        q_count=q_count, central=reference, has_test=yt is not None, record_outputs=False,
        chunk=chunk, progress=progress, desc=f"low-rank cross-entropy {algo.name}, "
        f"{rates} rates" + (f", {groups} mixing groups" if random else ""),
        runner=_runner(process, k, cols), groups=cols)

    finals = None if train_records == "all" else final_train_records(
        algo.parameters(carry[0]), data, q_count, k)

    def group_traj(one, col):
        meta = ce_metadata(factor, algo, one, scale=scale, padded=rows > inp.phi.shape[0],
                           given_f0=f0_train is not None, metadata=metadata)
        meta.update(process_metadata(process))
        traj = records_trajectory(group_raw(raw, col, cols), q_count, reference, rec_steps,
                                  phase, one.lr_q, meta, order, float(carry[3][col]))
        if finals is not None and len(traj.steps):
            set_last_train_records(traj, {key: v[..., col] for key, v in finals.items()},
                                   q_count)
        return traj

    return sweep_trajectories(inps, rates, groups, random, group_traj)


def check_call(*, rank, tol=None, acc_rows=None, form: str = "auto") -> None:
    """What the low-rank path does not take with ``loss="cross_entropy"``: a ``ValueError``
    naming the field (``rank="auto"`` and ``tol``: no error estimate to choose the rank
    from; ``acc_rows``; ``form="gram"``).  Every ``f0`` runs (one random network as
    ``P + 1`` groups of ``K`` columns, :func:`predict_random_lowrank_ce`)."""
    why = "with loss='cross_entropy' on the low-rank path"
    if isinstance(rank, str):
        raise ValueError(f"rank: 'auto' chooses the rank from the squared loss's a-priori "
                         f"error estimate, which does not bound cross-entropy; give an "
                         f"integer rank {why}")
    if tol is not None:
        raise ValueError(f"tol: there is no a-priori error estimate to hold tol against {why} "
                         "(it is derived for the squared loss); give an integer rank without tol")
    if acc_rows is not None:
        raise ValueError(f"acc_rows: {why} every training output is evaluated at each record "
                         "(the loss needs them all); remove acc_rows")
    if form not in ("auto", "features"):
        raise ValueError(f"form: {why} the step reads the agents' rows ('features'; the Gram "
                         f"form needs an affine gradient), got form={form!r}")


def predict_lowrank_ce(
    factor: LowRankFactor,
    y_train,
    agent,
    mixing,
    lr,
    steps,
    algorithm: str | Algorithm = "dgd",
    *,
    logit_scale: float = 1.0,
    f0_train=None,
    y_test=None,
    f0_test=None,
    reference: bool = True,
    record_outputs: bool = False,
    chunk: int = 25,
    progress: bool = False,
    metadata: dict | None = None,
    samples: int | None = None,
) -> Trajectory:
    r""":func:`ntkdyn.lowrank.predict_lowrank` with softmax cross-entropy (module docstring):
    ``y_train`` / ``y_test`` one-hot rows or integer labels (:func:`ntkdyn.losses.class_targets`),
    ``logit_scale`` the inverse temperature ``s``; a static mixing matrix, a periodic
    sequence or random gossip (``samples`` sequences, :func:`predict_lowrank_ce_gossip`),
    one rate or one per agent, every schedule.  The ``*_loss`` and
    ``objective`` fields are cross-entropy;
    ``metadata["low_rank"]["error_estimate"]`` is ``None`` (``error_estimate_reason`` says
    why) and ``metadata["stability"]`` the sufficient bound of :func:`stability_note`."""
    algo = get_algorithm(algorithm)
    scale = check_logit_scale(logit_scale)
    k = None if np.ndim(y_train) != 1 else (
        None if f0_train is None else np.shape(f0_train)[1])
    y = class_targets("y_train", y_train, k)
    yt = None if y_test is None else class_targets("y_test", y_test, y.shape[1])
    w, process = ce_mixing(mixing)
    if process is not None and process.random:
        return predict_lowrank_ce_gossip(
            factor, y, agent, process, lr, steps, algo, logit_scale=scale, samples=samples,
            f0_train=f0_train, y_test=yt, f0_test=f0_test, reference=reference,
            record_outputs=record_outputs, chunk=chunk, progress=progress, metadata=metadata)
    if samples is not None:
        raise ValueError("samples: only for a random mixing sequence; got "
                         f"samples={samples!r} with a static or periodic mixing")
    inp = lowrank_inputs(factor, y, agent, w, lr, steps, f0_train, yt, f0_test, None)
    q_count, r = inp.w.shape[0], inp.phi.shape[1]
    data, rows, order = _ce_data(factor, inp, scale, reference)
    if process is not None:
        data.update(process_arrays(process, None))
    raw, rec_steps, phase, carry = run_features(
        jnp.zeros((q_count + int(reference), r, y.shape[1])), data, algo, inp.steps,
        q_count=q_count, central=reference, has_test=inp.yt is not None,
        record_outputs=record_outputs, chunk=chunk, progress=progress,
        desc=f"low-rank cross-entropy {algo.name}", runner=_runner(process))
    meta = ce_metadata(factor, algo, inp, scale=scale, padded=rows > inp.phi.shape[0],
                       given_f0=f0_train is not None, metadata=metadata)
    meta.update(process_metadata(process))
    return records_trajectory(raw, q_count, reference, rec_steps, phase, inp.lr_q, meta,
                              order, float(carry[3]))


def _sequence_groups(factor: LowRankFactor, y, agent, process, lr, steps, algo: Algorithm, *,
                     f0, yt, ft, keys, scale: float, reference: bool, record_outputs: bool,
                     chunk: int, progress: bool, desc: str, given_f0: bool,
                     metadata: dict | None) -> list[Trajectory]:
    r"""Cross-entropy with a random mixing sequence: ``G = len(keys) + 1`` groups of ``K``
    columns side by side in one state ``(A, r, G K)``, group ``g < G - 1`` mixed by the
    sampled sequence of ``keys[g]``, the last by ``E[W]``
    (:func:`~ntkdyn.graphs.sequences.groups_mixing_at`), the softmax over each group's
    ``K`` columns (:func:`ce_operators`), every read of ``Phi_q`` shared.
    ``y`` / ``yt``: the ``K`` target columns of every group; ``f0`` / ``ft``: each group's
    own initial outputs ``(N, G K)`` / ``(M, G K)``.  One trajectory per group; a group
    that diverges is frozen, the others go on (:func:`ce_run_chunk` with ``groups``)."""
    groups, k = len(keys) + 1, y.shape[1]
    w = np.asarray(process.expected(), dtype=np.float64)
    inp = lowrank_inputs(factor, np.tile(y, groups), agent, w, lr, steps, f0,
                         None if yt is None else np.tile(yt, groups), ft, None)
    q_count, r = inp.w.shape[0], inp.phi.shape[1]
    data, rows, order = _ce_data(factor, inp, scale, reference)
    data.update(process_arrays(process, 1), mix_keys=keys)
    raw, rec_steps, phase, carry = run_features(
        jnp.zeros((q_count + int(reference), r, groups * k)), data, algo, inp.steps,
        q_count=q_count, central=reference, has_test=yt is not None,
        record_outputs=record_outputs, chunk=chunk, progress=progress, desc=desc,
        runner=_runner(process, k, groups), groups=groups)
    last = slice((groups - 1) * k, groups * k)  # the metadata: the E[W] group's columns
    inp_k = dataclasses.replace(inp, y=y, f0=inp.f0[:, last], yt=yt,
                                ft=None if yt is None else inp.ft[:, last])
    meta = ce_metadata(factor, algo, inp_k, scale=scale, padded=rows > inp.phi.shape[0],
                       given_f0=given_f0, metadata=metadata)
    meta.update(process_metadata(process))
    return [records_trajectory(group_raw(raw, g, groups), q_count, reference, rec_steps,
                               phase, inp.lr_q, meta, order, float(carry[3][g]))
            for g in range(groups)]


def predict_lowrank_ce_gossip(
    factor: LowRankFactor, y_train, agent, process, lr, steps,
    algorithm: str | Algorithm = "dgd", *, logit_scale: float = 1.0,
    samples: int | None = None, f0_train=None, y_test=None, f0_test=None,
    reference: bool = True, record_outputs: bool = False, chunk: int = 25,
    progress: bool = False, metadata: dict | None = None,
):
    r""":func:`predict_lowrank_ce` with random gossip, as on the exact path: ``samples``
    (default 64) sampled mixing sequences (sequence ``s`` the one the exact path and the
    training harness draw with ``gossip_sample=s``) and the run with ``E[W]``, ``G =
    samples + 1`` groups from the same ``f_0`` (:func:`_sequence_groups`).  Returns a
    :class:`~ntkdyn.trajectory.GossipTrajectory`: the means over the sequences, quantile
    bands, ``per_sample`` and ``.expected``, the run with ``E[W]`` -- with cross-entropy
    *not* the expected trajectory (the dynamics are not affine in ``W``)."""
    from ntkdyn.dynamics.run import aggregate_sequences
    from ntkdyn.graphs.sequences import resolve_mixing

    algo = get_algorithm(algorithm)
    scale = check_logit_scale(logit_scale)
    _, process = resolve_mixing(process, name="mixing")
    if process is None or not process.random:
        raise ValueError("mixing: expected a random mixing sequence (random_edges / "
                         "one_random_edge); static and periodic ones run on predict_lowrank_ce")
    groups, samples = process_groups(process, samples)
    y = class_targets("y_train", y_train, None if f0_train is None else np.shape(f0_train)[1])
    k = y.shape[1]
    yt = None if y_test is None else class_targets("y_test", y_test, k)
    if yt is not None:
        check_f0_pair(f0_train, f0_test)
    f0 = np.zeros_like(y) if f0_train is None else np.asarray(f0_train, dtype=np.float64)
    ft = None if yt is None else (np.zeros_like(yt) if f0_test is None
                                  else np.asarray(f0_test, dtype=np.float64))
    if f0.shape != y.shape:
        raise ValueError(f"f0_train: expected shape {y.shape}, got {f0.shape}")
    if ft is not None and ft.shape != yt.shape:
        raise ValueError(f"f0_test: expected shape {yt.shape}, got {ft.shape}")
    keys = process_arrays(process, samples)["mix_keys"]
    trajs = _sequence_groups(
        factor, y, agent, process, lr, steps, algo, f0=np.tile(f0, groups),
        yt=yt, ft=None if ft is None else np.tile(ft, groups), keys=keys, scale=scale,
        reference=reference, record_outputs=record_outputs, chunk=chunk, progress=progress,
        desc=f"low-rank cross-entropy {algo.name}, random mixing", given_f0=f0_train is not None,
        metadata=metadata)
    return aggregate_sequences(trajs[:-1], trajs[-1], what="mixing")


def predict_random_lowrank_ce(
    factor: LowRankFactor, draws, y_train, agent, mixing, lr, steps,
    algorithm: str | Algorithm = "dgd", *, logit_scale: float = 1.0, y_test=None,
    reference: bool = True, record_outputs: bool = False, chunk: int = 25,
    progress: bool = False, metadata: dict | None = None, draws_info: dict | None = None,
    samples: int | None = None,
):
    r"""One random network with softmax cross-entropy on the low-rank factor, as the exact
    path's independent networks (:mod:`ntkdyn.dynamics.random_init`): the
    ``P = draws.samples`` sampled networks (``draws`` an
    :class:`~ntkdyn.dynamics.random_init.InitDraws` with ``outputs = K``: network ``s``
    starts from columns ``s K .. s K + K - 1`` of ``draws.train`` / ``draws.test``, the
    caller's row order) and the network from ``f_0 = 0`` run as ``P + 1`` groups of ``K``
    columns of one feature recursion, state ``(A, r, (P + 1) K)``, the softmax over each
    group (:func:`ce_operators`): every read of ``Phi_q`` is shared, a step costs
    ``4 N r (P + 1) K`` flops (twice with the reference).  Group ``s`` is exactly
    :func:`predict_lowrank_ce` with ``f0_train`` / ``f0_test`` network ``s``'s draws.

    Returns a :class:`~ntkdyn.trajectory.RandomNetworkTrajectory`: the fields are the means
    over the sampled networks (expected losses), ``band(..., over="init")`` their
    quantiles, ``.mean_network`` the network from ``f_0 = 0`` (with cross-entropy not the
    expected network: the dynamics are not affine in ``f_0``); ``record_outputs``: that
    network's outputs.  ``draws_info`` goes to ``metadata["low_rank"]["f0_draws"]``.

    With random gossip (``samples``: ``None`` or ``P``) network ``s`` runs on sampled
    sequence ``s``, as on the exact path: ``2 P + 1`` groups (:func:`_random_networks_gossip`)."""
    from ntkdyn.lowrank.networks import assemble_networks

    algo = get_algorithm(algorithm)
    scale = check_logit_scale(logit_scale)
    n = np.shape(factor.phi)[0]
    y = class_targets("y_train", y_train, draws.outputs if np.ndim(y_train) == 1 else None)
    k, p = y.shape[1], draws.samples
    if draws.outputs != k or draws.train.shape != (n, p * k):
        raise ValueError(f"draws: expected ({n}, P K) training draws with K = {k} columns per "
                         f"network (InitDraws(outputs={k})), got {draws.train.shape} with "
                         f"outputs={draws.outputs}")
    w, process = ce_mixing(mixing)
    if process is not None and process.random:
        return _random_networks_gossip(factor, draws, y, agent, process, lr, steps, algo,
                                       scale=scale, samples=samples, y_test=y_test,
                                       reference=reference, record_outputs=record_outputs,
                                       chunk=chunk, progress=progress, metadata=metadata,
                                       draws_info=draws_info)
    if samples is not None:
        raise ValueError("samples: only for a random mixing sequence; got "
                         f"samples={samples!r} with a static or periodic mixing")
    groups = p + 1  # the P networks, then f_0 = 0
    yt = ft = None
    if y_test is not None:
        yt = class_targets("y_test", y_test, k)
        if draws.test is None or draws.test.shape != (yt.shape[0], p * k):
            raise ValueError(f"draws: expected ({yt.shape[0]}, {p * k}) test draws")
        ft = np.concatenate([draws.test, np.zeros_like(yt)], axis=1)
        yt = np.tile(yt, groups)
    inp = lowrank_inputs(factor, np.tile(y, groups), agent, w, lr, steps,
                         np.concatenate([draws.train, np.zeros_like(y)], axis=1), yt, ft, None)
    q_count, r = inp.w.shape[0], inp.phi.shape[1]
    data, rows, order = _ce_data(factor, inp, scale, reference)
    if process is not None:
        data.update(process_arrays(process, None))
    raw, rec_steps, phase, carry = run_features(
        jnp.zeros((q_count + int(reference), r, groups * k)), data, algo, inp.steps,
        q_count=q_count, central=reference, has_test=inp.yt is not None,
        record_outputs=record_outputs, chunk=chunk, progress=progress,
        desc=f"low-rank cross-entropy {algo.name}, {p} networks",
        runner=_runner(process, k))
    inp_k = dataclasses.replace(inp, y=inp.y[:, :k], f0=np.zeros((n, k)),
                                yt=None if yt is None else inp.yt[:, :k],
                                ft=None if yt is None else np.zeros((len(inp.yt), k)))
    meta = ce_metadata(factor, algo, inp_k, scale=scale, padded=rows > n, given_f0=False,
                       metadata=metadata)
    meta.update(process_metadata(process))
    meta["low_rank"]["f0_draws"] = dict(draws_info or {}, samples=p, seed=draws.seed,
                                        outputs=k)
    return assemble_networks(raw, q_count, reference, rec_steps, phase, inp.lr_q, meta,
                             order, float(carry[3]), draws)


def _random_networks_gossip(factor: LowRankFactor, draws, y, agent, process, lr, steps,
                            algo: Algorithm, *, scale: float, samples, y_test, reference: bool,
                            record_outputs: bool, chunk: int, progress: bool,
                            metadata: dict | None, draws_info: dict | None):
    r"""One random network with cross-entropy and random gossip, the exact path's
    independent networks (:mod:`ntkdyn.dynamics.random_init`): ``G = 2 P + 1`` groups
    (:func:`_sequence_groups`): network ``s`` (``f_0`` its draws) on sampled sequence
    ``s``, the network from ``f_0 = 0`` on the same ``P`` sequences, then from ``f_0 = 0``
    with ``E[W]``.  A :class:`~ntkdyn.trajectory.RandomNetworkTrajectory` whose band is
    over initialisations and sequences jointly; ``.mean_network`` a
    :class:`~ntkdyn.trajectory.GossipTrajectory` (the ``f_0 = 0`` network, band over the
    sequences)."""
    from ntkdyn.dynamics import random_init
    from ntkdyn.dynamics.run import aggregate_sequences

    n, k, p = y.shape[0], y.shape[1], draws.samples
    if samples is not None and samples != p:
        raise ValueError(f"samples: with f0='random' network s runs on sequence s: expected "
                         f"samples = {p} (the sampled networks), got {samples!r}")
    yt = ft = None
    zeros = np.zeros((n, (p + 1) * k))
    if y_test is not None:
        yt = class_targets("y_test", y_test, k)
        if draws.test is None or draws.test.shape != (yt.shape[0], p * k):
            raise ValueError(f"draws: expected ({yt.shape[0]}, {p * k}) test draws")
        ft = np.concatenate([draws.test, np.zeros((yt.shape[0], (p + 1) * k))], axis=1)
    keys = process_arrays(process, p)["mix_keys"]
    trajs = _sequence_groups(
        factor, y, agent, process, lr, steps, algo,
        f0=np.concatenate([draws.train, zeros], axis=1), yt=yt, ft=ft,
        keys=jnp.concatenate([keys, keys]), scale=scale, reference=reference,
        record_outputs=record_outputs, chunk=chunk, progress=progress,
        desc=f"low-rank cross-entropy {algo.name}, {p} networks on random mixing",
        given_f0=False, metadata=metadata)
    for t in trajs:
        t.metadata["low_rank"]["f0_draws"] = dict(draws_info or {}, samples=p,
                                                  seed=draws.seed, outputs=k)
    mean = aggregate_sequences(trajs[p:2 * p], trajs[-1], what="mixing")
    traj = random_init.assemble(mean, trajs[:p], draws, None, over="init+mixing")
    return dataclasses.replace(traj, metadata=dict(traj.metadata, path="low_rank"))


def stability_note(factor: LowRankFactor, agent, mixing, algorithm: str | Algorithm, lr,
                   logit_scale: float) -> tuple[str, float]:
    """``(note, bound)``: the exact path's cross-entropy stability statement
    (:func:`ntkdyn.dynamics.run.cross_entropy_bound`) on the truncated operator: the squared
    loss's sufficient bound (one profile for all agents, as the exact path's, a bound on the
    largest rate) with the agents' curvatures ``lambda_max(Phi_q^T Phi_q) / N_q``
    (:class:`ntkdyn.lowrank.stability.FeatureProblem`) times ``2 / s^2`` (the largest
    softmax curvature ``s^2 / 2``); ``nan`` where the schedule has none.  It is at least the
    full kernel's (``lambda_max(G_q) <= lambda_max(Theta_qq)``), equal at a kernel's rank."""
    from ntkdyn._utils.checks import learning_rates
    from ntkdyn.dynamics.stability import schedule_sufficient_bound
    from ntkdyn.lowrank.stability import FeatureProblem

    algo = get_algorithm(algorithm)
    problem = FeatureProblem(factor, agent, mixing)
    learning_rates(lr, problem.num_agents)  # checked; the bound is on the largest rate
    bound = schedule_sufficient_bound(problem, algo) * 2.0 / logit_scale ** 2
    value = (f"lr < {bound:.6g}" if np.isfinite(bound) else
             "none known for this schedule and mixing")
    note = ("loss='cross_entropy': the dynamics are not affine, exact stability is not "
            "computed here; sufficient bound from the largest softmax curvature (s^2/2, "
            f"s = logit_scale = {logit_scale:g}) on the rank-{factor.rank} coordinates "
            f"(at least the full kernel's): {value}; status reflects an observed blow-up only")
    return note, float(bound)


def ce_metadata(factor: LowRankFactor, algo: Algorithm, inp, *, scale: float, padded: bool,
                given_f0: bool, metadata: dict | None) -> dict:
    """``Trajectory.metadata`` of a low-rank cross-entropy prediction: the factor's facts,
    no error estimate (``error_estimate_reason``), the stability note, which network."""
    n, k, q_count = inp.y.shape[0], inp.y.shape[1], inp.w.shape[0]
    low = dict(factor.describe(), error_estimate=None, error_estimate_kind="unavailable",
               error_estimate_reason=NO_ESTIMATE, padded=bool(padded), form="features",
               acc_rows=n, loss="cross_entropy")
    if inp.yt is not None:
        low.update(error_estimate_test=None, error_estimate_test_kind="unavailable")
    note, bound = stability_note(factor, inp.agent, inp.w, algo, inp.lr_q, scale)
    meta = {
        "algorithm": algo.name, "num_agents": q_count, "num_train": n, "num_outputs": k,
        "kernel_layout": "traced", "path": "low_rank", "low_rank": low,
        "loss": "cross_entropy", "stability": note, "stability_bound": bound,
        "quantity": CE_ZERO_WORDS if not given_f0 else "the network with the given f0",
        "mixing": inp.w.tolist(), **(metadata or {}), **schedule_metadata(algo),
    }
    if scale != 1.0:
        meta["logit_scale"] = scale
    return meta


def linearised_factor(factor: LowRankFactor, logit_scale: float = 1.0, f0_train=None,
                      num_outputs: int | None = None) -> tuple[LowRankFactor, bool]:
    r"""``(Psi, per_output)``: a factor of the kernel ``Theta~_f0 = G Theta~ G`` whose
    squared-loss step has the spectrum of the cross-entropy step linearised at ``f_0``
    (:mod:`ntkdyn.dynamics.ce_stability`, module docstring), ``Theta~ = Phi Phi^T``.

    ``f_0 = 0`` (``f0_train`` ``None`` or all zeros; the exact path's traced shortcut):
    ``H_i = (I - 1 1^T/K) / K`` for every sample, so ``Theta~_f0 = (s^2/K) Theta~ (x)
    (I - 1 1^T/K)`` and ``Psi = (s / sqrt K) Phi`` (``N x r``, ``per_output`` False; the
    all-ones output direction is pure mixing, left out as on the exact path).  Otherwise
    ``G = s blockdiag_i H_i^{1/2}`` (``p_i = softmax(s f_0(x_i))``) and ``Psi = sqrt(K) G
    (Phi (x) I_K)``: ``N K x r K``, row ``(i, a)``, column ``(j, b)`` equal to ``sqrt(K)
    g_i[a, b] Phi[i, j]``, so ``Psi Psi^T = K G (Theta~ (x) I_K) G``; the factor ``K``
    offsets the ``K``-fold row count of each agent (:class:`~ntkdyn.lowrank.stability.
    FeatureProblem` divides by the rows of agent ``q``, the exact path by its ``N_q``
    samples); ``per_output`` True (pass every agent index repeated ``K`` times).  At full
    rank ``Psi Psi^T`` is the exact path's linearised kernel (times ``K`` in the second
    case), and ``Theta - Theta~`` PSD gives ``G Theta G - G Theta~ G`` PSD: the truncated
    ``lr*`` bounds the full one from above where ``lr*`` is a Rayleigh quotient (as for the
    squared loss, :mod:`ntkdyn.lowrank.stability`)."""
    from ntkdyn.dynamics.ce_stability import softmax_hessians

    scale = check_logit_scale(logit_scale)
    phi = np.asarray(factor.phi, dtype=np.float64)
    if f0_train is None or not np.any(f0_train):
        k = np.shape(f0_train)[1] if f0_train is not None else num_outputs
        if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
            raise ValueError(f"num_outputs: expected the number of outputs K >= 1 with "
                             f"f0_train=None, got {num_outputs!r}")
        return dataclasses.replace(factor, phi=phi * (scale / np.sqrt(k)), phi_test=None), \
            False
    f0 = np.asarray(f0_train, dtype=np.float64)
    if f0.shape[0] != phi.shape[0]:
        raise ValueError(f"f0_train: expected {phi.shape[0]} rows (one per training sample), "
                         f"got shape {f0.shape}")
    n, k, r = phi.shape[0], f0.shape[1], phi.shape[1]
    vals, vecs = np.linalg.eigh(softmax_hessians(f0, scale))
    g = scale * np.einsum("nij,nj,nkj->nik", vecs, np.sqrt(np.clip(vals, 0.0, None)), vecs)
    psi = np.sqrt(k) * np.einsum("iab,ij->iajb", g, phi).reshape(n * k, r * k)
    return dataclasses.replace(factor, phi=psi, phi_test=None), True


def lowrank_ce_stability(factor: LowRankFactor, agent, mixing,
                         algorithm: str | Algorithm = "dgd", lr=None, *,
                         logit_scale: float = 1.0, f0_train=None,
                         num_outputs: int | None = None):
    r"""The exact path's cross-entropy stability (:func:`ntkdyn.dynamics.ce_stability.
    stability`) on the truncated operator ``Theta~ = Phi Phi^T``: stable set, spectral
    radius, ``lr*`` and margin of the step linearised at ``f_0`` (``f0_train``; ``None``:
    the mean network ``f_0 = 0``, with ``num_outputs = K``), computed on the feature
    coordinates of :func:`linearised_factor` (``r`` per agent at ``f_0 = 0``, ``r K``
    otherwise; :class:`~ntkdyn.lowrank.stability.FeatureStepOperator`); ``lr_bound`` the
    sufficient bound from the largest softmax curvature ``s^2/2`` on the truncated
    operator (the squared loss's with the agents' ``lambda_max(Phi_q^T Phi_q) / N_q``,
    times ``2 / s^2``, the rate profile as on the exact path); ``note`` the exact path's
    words.  At full rank (``Phi Phi^T = Theta``) every number is the exact path's."""
    from ntkdyn._utils.checks import learning_rates
    from ntkdyn.dynamics.ce_stability import EXACTNESS
    from ntkdyn.dynamics.stability import operator_report, schedule_sufficient_bound
    from ntkdyn.lowrank.stability import FeatureProblem, FeatureStepOperator

    algo = get_algorithm(algorithm)
    scale = check_logit_scale(logit_scale)
    agent = np.asarray(agent)
    psi, per_output = linearised_factor(factor, scale, f0_train, num_outputs)
    problem = FeatureProblem(psi, np.repeat(agent, psi.rank // factor.rank)
                             if per_output else agent, mixing)
    lrs = learning_rates(lr, problem.num_agents)
    profile = lrs / np.max(lrs)
    report = operator_report(FeatureStepOperator(problem, algo, profile), lrs)
    bound = schedule_sufficient_bound(FeatureProblem(factor, agent, mixing), algo, profile) \
        * 2.0 / scale ** 2
    at = "f_0 = 0" if not per_output else "the initial outputs f_0"
    coords = f"rank-{factor.rank}" + (" x K-output" if per_output else "")
    note = (f"loss='cross_entropy' (logit_scale {scale:g}): linearised at {at} "
            f"({EXACTNESS}); sufficient bound lr_bound from the largest softmax curvature "
            "s^2/2 holds along the whole trajectory")
    return dataclasses.replace(
        report, lr_bound=float(bound), loss="cross_entropy", note=note,
        method=f"low-rank (rank {factor.rank}), {report.method}",
        operator=f"{report.operator} of the cross-entropy step linearised at {at} on the "
                 f"{coords} coordinates (truncated kernel; its lr* is an upper bound on the "
                 "full kernel's for DGD/ATC/CTA)")
