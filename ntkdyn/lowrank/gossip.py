r"""Time-varying and random mixing on the low-rank path (issue 17: "the same schedules").

A mixing *process* (:mod:`ntkdyn.graphs.sequences`) gives one matrix ``W_e`` per
communication event; step ``k`` of an algorithm with ``m`` mixes per step uses events
``k m .. k m + m - 1``.  The combine acts on the agents' index only, so on the feature
coordinates ``beta_q = Phi^T alpha_q`` (:mod:`ntkdyn.lowrank.evolve`) it is

    ``beta_q <- sum_p (W_e)_qp beta_p``,

the same ``r x K`` blocks mixed by the same matrix as the ``N x K`` kernel coefficients of
the exact path: for a kernel of rank ``<= r`` the two recursions map onto each other
exactly at every step, whatever the sequence.  The gradient, the Gram / feature form and
the records are those of the static path.

* **Periodic** sequences: one run, ``W_e = cycle[e mod P]`` inside the loop.
* **Random** gossip: as on the exact path (:func:`ntkdyn.dynamics.solver.mixing_groups`),
  ``S`` sampled sequences (sequence ``s`` draws event ``e`` from
  ``fold_in(fold_in(PRNGKey(seed), s), e)``, the matrices the exact path and the training
  harness use) and one group running the mean-state recursion with ``E[W]``, side by side
  as ``G = S + 1`` column groups of the state ``(A, r, G K)``: they share every read of
  ``Phi`` (feature form) or of the Gram matrices.  The result is the same
  :class:`~ntkdyn.trajectory.GossipTrajectory` (means over the sequences, quantile bands,
  ``.expected``, ``per_sample``).

* **One random network** (``f0="random"``) on random gossip
  (:func:`predict_random_lowrank_gossip`): as on the exact path, ``P`` independent
  networks of ``K`` draw columns, network ``s`` on sequence ``s``, the mean network on
  the same sequences and the ``E[W]`` recursion from every network's ``f_0`` and from
  ``f_0 = 0``: ``G = 3 P + 1`` groups whose residuals differ, each group's record terms
  sliced from the ``G K`` columns (:func:`group_columns`).  (A periodic sequence keeps the
  ``K + P`` shared cyclic columns: :func:`ntkdyn.lowrank.networks.predict_random_lowrank`.)

Divergence is flagged per group, as on the exact path (:func:`ntkdyn.lowrank.evolve.
divergence_check` with ``groups``): a sequence that diverges is frozen and its records
end there, the other sequences and the ``E[W]`` recursion go on.
"""

from __future__ import annotations

import dataclasses
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from ntkdyn.algorithms import Algorithm, Operators, get_algorithm
from ntkdyn.engine import scan_records
from ntkdyn.graphs.sequences import (
    groups_mixing_at,
    mix_over_neighbours,
    process_arrays,
    process_metadata,
    sums_over_neighbours,
    supported_sampler,
)
from ntkdyn.lowrank.evolve import (
    EXACT,
    check_lrs,
    check_rate_block,
    column_rates,
    divergence_check,
    divergence_limit,
    evolve_bytes,
    final_accuracies,
    group_records,
    grouped_data,
    lowrank_inputs,
    lowrank_metadata,
    lowrank_operators,
    prepare_features,
    record_state,
    records_trajectory,
    run_features,
    set_last_accuracies,
    slot_rates,
    split_groups,
)
from ntkdyn.lowrank.factor import LowRankFactor
from ntkdyn.trajectory import Trajectory

#: sampled sequences of a random process when ``samples`` is not given (the exact path's)
DEFAULT_SAMPLES = 64


def process_groups(process, samples: int | None) -> tuple[int, int | None]:
    """``(G, samples)``: column groups and the checked ``samples``.  Periodic: one group and
    ``samples`` must be ``None``; random: ``samples`` (default :data:`DEFAULT_SAMPLES`)
    sequences plus the ``E[W]`` group.  ``ValueError`` naming ``samples`` otherwise."""
    from ntkdyn.minibatch import check_samples

    if not process.random:
        if samples is not None:
            raise ValueError("samples: only for a random mixing sequence; a periodic "
                             f"sequence is deterministic, got samples={samples!r}")
        return 1, None
    samples = check_samples(DEFAULT_SAMPLES if samples is None else samples)
    return samples + 1, samples


def require_process(mixing, static_entry: str) -> tuple[np.ndarray, object]:
    """``(W, process)`` of a mixing process (``W``: its period's average or ``E[W]``);
    ``ValueError`` naming ``mixing`` for a static matrix, which runs on ``static_entry``."""
    from ntkdyn.graphs.sequences import resolve_mixing

    w_exp, process = resolve_mixing(mixing, name="mixing")
    if process is None:
        raise ValueError("mixing: expected a mixing process (ntkdyn.graphs.periodic / "
                         "random_edges / one_random_edge); a static matrix runs on "
                         f"{static_entry}")
    return w_exp, process


def mix_groups(w, xa, neighbours=None):
    """``x_q <- sum_p (W^g)_qp x_p`` for each of the ``G`` column groups of the agents'
    state ``xa`` ``(Q, r, G K)`` with its own matrix ``w[g]`` (``w``: ``(G, Q, Q)``; one
    matrix, ``G = 1``, mixes every column).  With the support of the draws
    (``neighbours``, :class:`~ntkdyn.graphs.sequences.SupportedSampler`) where
    :func:`~ntkdyn.graphs.sequences.sums_over_neighbours`, a sum over the neighbours
    (``D`` reads of the state), else one einsum."""
    if w.shape[0] == 1:
        return jnp.tensordot(w[0], xa, axes=1, precision=EXACT)
    q, r, c = xa.shape
    g = w.shape[0]
    if sums_over_neighbours(neighbours, q):
        return mix_over_neighbours(w, xa.reshape(q, r, g, c // g), neighbours).reshape(q, r, c)
    return jnp.einsum("gpq,qrgc->prgc", w, xa.reshape(q, r, g, c // g),
                      precision=EXACT).reshape(q, r, c)


def process_operators(data: dict, t, *, q_count: int, central: bool, sampler,
                      mixes_per_step: int, groups: int, tile: bool = True) -> Operators:
    """:func:`ntkdyn.lowrank.evolve.lowrank_operators` on ``G`` column groups with the
    combine ``x_q <- sum_p (W_e^g)_qp x_p`` of each group's matrix at step ``t``.
    ``tile``: the residual terms of ``data`` hold ``K`` columns, shared by the groups
    (:func:`grouped_data`); ``False``: they already hold each group's ``G K`` columns
    (one random network's independent networks, :func:`predict_random_lowrank_gossip`)."""
    base = lowrank_operators(grouped_data(data, groups) if tile else data, q_count, central)
    w_at = groups_mixing_at(data, t, sampler=sampler, mixes_per_step=mixes_per_step)

    def mix(x, j=0):
        agents = mix_groups(w_at(j), x[:q_count], w_at.neighbours)
        return jnp.concatenate([agents, x[q_count:]], axis=0) if central else agents

    return Operators(mix=mix, grad=base.grad, scale=base.scale)


@partial(jax.jit, static_argnames=("algorithm", "q_count", "central", "sampler", "groups"))
def init_process_state(x0, data, *, algorithm, q_count, central, sampler, groups):
    """The algorithm's initial state with the operators of step 0."""
    ops = process_operators(data, jnp.asarray(0.0), q_count=q_count, central=central,
                            sampler=sampler, mixes_per_step=algorithm.mixes_per_step,
                            groups=groups)
    return algorithm.initial_state(x0, ops)


@partial(jax.jit, static_argnames=("algorithm", "q_count", "central", "has_test",
                                   "record_outputs", "sampler", "groups"))
def run_process_chunk(carry, n_steps, data, *, algorithm, q_count, central, has_test,
                      record_outputs, sampler, groups):
    """:func:`ntkdyn.lowrank.evolve.run_chunk` with the step's mixing matrices of the
    sequence (:func:`process_operators`) and the records of every group."""
    params = algorithm.parameters
    checked = divergence_check(params, data["limit_per_step"], groups)

    def operators(t):
        return process_operators(data, t, q_count=q_count, central=central, sampler=sampler,
                                 mixes_per_step=algorithm.mixes_per_step, groups=groups)

    def record(st, x):
        rec = group_records(params(x), data, groups=groups, q_count=q_count,
                            central=central, has_test=has_test,
                            record_outputs=record_outputs)
        rec["diverged"] = st[2]
        return st, rec

    return scan_records(carry, n_steps, algorithm=algorithm, operators=operators,
                        check=checked, record=record)


# ----------------------------------------------------- one random network, random gossip
def group_columns(prep, res_test, counts, groups: int) -> dict:
    r"""The column terms of the records for ``G`` groups whose residuals differ (leading
    axis ``G``, ``K`` columns each), from the prepared data of ``G K`` columns: the linear
    terms ``Phi^T r`` sliced, the constants ``||r_g||^2`` (train, objective with the
    weights ``1 / (Q N_q)``, per agent in the Gram form, test) per group, the residual
    blocks of the feature form and the initial outputs of the accuracies and outputs."""
    data, res = prep.data, prep.res
    n, q_count = res.shape[0], len(counts)
    k = res.shape[1] // groups

    def cols(a):
        a = jnp.asarray(a)
        return jnp.moveaxis(a.reshape(*a.shape[:-1], groups, k), -2, 0)

    sq = (res.reshape(n, groups, k) ** 2).sum(axis=2)  # (N, G)
    wts = np.repeat(1.0 / counts / q_count, counts)
    out = {"train": {"lin": cols(data["train"]["lin"]), "const": jnp.asarray(sq.sum(0))},
           "obj": {"lin": cols(data["obj"]["lin"]),
                   "const": jnp.asarray((sq * wts[:, None]).sum(0))},
           "acc_f0": cols(data["acc_f0"])}
    if "grams" in data:
        off = prep.offsets
        out["lins"] = cols(data["lins"])
        out["consts"] = jnp.asarray(np.stack([sq[off[q]:off[q + 1]].sum(0)
                                              for q in range(q_count)], axis=1))
    elif isinstance(data["res"], tuple):
        out["res"] = tuple(cols(rq) for rq in data["res"])
    else:
        out["res"] = cols(data["res"])
    if "f0" in data:
        out["f0"] = cols(data["f0"])
    if res_test is not None:
        out["f0_test"] = cols(data["f0_test"])
        out["test"] = {"lin": cols(data["test"]["lin"]), "const": jnp.asarray(
            (res_test.reshape(len(res_test), groups, k) ** 2).sum(axis=(0, 2)))}
    return out


def _with_group(data: dict, one: dict) -> dict:
    """``data`` with one group's column terms (:func:`group_columns`) in place."""
    out = dict(data, **{key: v for key, v in one.items()
                        if key not in ("train", "obj", "test")})
    for key in ("train", "obj", "test"):
        if key in one:
            out[key] = dict(data[key], **one[key])
    return out


@partial(jax.jit, static_argnames=("algorithm", "q_count", "central", "has_test",
                                   "record_outputs", "sampler", "groups"))
def run_independent_chunk(carry, n_steps, data, *, algorithm, q_count, central, has_test,
                          record_outputs, sampler, groups):
    """:func:`run_process_chunk` for groups with their own residuals (``data["groups"]``:
    :func:`group_columns`): each group recorded with its own column terms."""
    params = algorithm.parameters
    checked = divergence_check(params, data["limit_per_step"], groups)

    def operators(t):
        return process_operators(data, t, q_count=q_count, central=central, sampler=sampler,
                                 mixes_per_step=algorithm.mixes_per_step, groups=groups,
                                 tile=False)

    def record(st, x):
        a, r, c = params(x).shape
        xg = jnp.moveaxis(params(x).reshape(a, r, groups, c // groups), 2, 0)
        rec = jax.vmap(lambda one, cols: record_state(
            one, _with_group(data, cols), q_count=q_count, central=central,
            has_test=has_test, record_outputs=record_outputs))(xg, data["groups"])
        rec["diverged"] = st[2]
        return st, rec

    return scan_records(carry, n_steps, algorithm=algorithm, operators=operators,
                        check=checked, record=record)


@partial(jax.jit, static_argnames=("algorithm", "q_count", "central", "sampler", "groups"))
def init_independent_state(x0, data, *, algorithm, q_count, central, sampler, groups):
    """The algorithm's initial state with the operators of step 0 (groups' own residuals)."""
    ops = process_operators(data, jnp.asarray(0.0), q_count=q_count, central=central,
                            sampler=sampler, mixes_per_step=algorithm.mixes_per_step,
                            groups=groups, tile=False)
    return algorithm.initial_state(x0, ops)


def independent_outputs(draws, y, yt):
    """``(Y, f_0, Y_T, f_0T)`` of the ``G = 3 P + 1`` groups side by side (``G K``
    columns), the exact path's layout (:func:`ntkdyn.dynamics.random_init.
    group_initial_outputs` with the band over initialisations): the ``P`` networks
    (``f_0 = g_s``, network ``s``'s ``K`` draw columns), the mean network ``P`` times,
    the ``P`` networks again (the ``E[W]`` runs), the mean network (``E[W]``)."""
    p, k = draws.samples, y.shape[1]

    def layout(g, rows):
        nets = g.reshape(rows, p, k).transpose(1, 0, 2)
        zero = np.zeros((p, rows, k))
        groups = np.concatenate([nets, zero, nets, np.zeros((1, rows, k))])
        return groups.transpose(1, 0, 2).reshape(rows, -1)

    n, g_count = y.shape[0], 3 * p + 1
    yt_aug = ft_aug = None
    if yt is not None:
        yt_aug, ft_aug = np.tile(yt, (1, g_count)), layout(draws.test, yt.shape[0])
    return np.tile(y, (1, g_count)), layout(draws.train, n), yt_aug, ft_aug


# long unit: checks, the 3 P + 1 groups, run, assembly as the exact path's
def predict_random_lowrank_gossip(
    factor: LowRankFactor, draws, y_train, agent, process, lr, steps,
    algorithm: str | Algorithm = "dgd", *, samples: int | None = None, y_test=None,
    reference: bool = True, record_outputs: bool = False, acc_rows: int | None = None,
    chunk: int = 25, progress: bool = False, seed: int = 0, metadata: dict | None = None,
    form: str = "auto", draws_info: dict | None = None,
):
    r"""One random network with a random mixing sequence on the low-rank path, as on the
    exact path (:func:`ntkdyn.dynamics.run.run_problem`): ``P = draws.samples``
    independent networks (``draws.outputs == K`` draw columns each), network ``s`` on
    sampled sequence ``s``; the mean network on the same ``P`` sequences; the ``E[W]``
    recursion from each network's ``f_0`` and from ``f_0 = 0`` -- ``G = 3 P + 1`` groups
    of ``K`` columns in one state ``(A, r, G K)`` (:func:`independent_outputs`), each
    group mixed by its own matrix and recorded with its own residual
    (:func:`group_columns`).  Returns a
    :class:`~ntkdyn.trajectory.RandomNetworkTrajectory` (band over initialisations and
    sequences; ``.mean_network`` a :class:`~ntkdyn.trajectory.GossipTrajectory`;
    ``.init_band_run`` the ``E[W]`` runs).  ``samples``: ``None`` or ``P``."""
    from ntkdyn.dynamics import random_init
    from ntkdyn.dynamics.run import aggregate_sequences
    from ntkdyn.graphs.sequences import resolve_mixing

    algo = get_algorithm(algorithm)
    w_exp, process = resolve_mixing(process, name="mixing")
    y = np.asarray(y_train, dtype=np.float64)
    n, k, p = factor.phi.shape[0], y.shape[1], draws.samples
    if process is None or not process.random:
        raise ValueError("mixing: expected a random mixing sequence (random_edges / "
                         "one_random_edge); static and periodic ones run on "
                         "networks.predict_random_lowrank")
    if draws.outputs != k or draws.train.shape != (n, p * k):
        raise ValueError(f"draws: independent networks need ({n}, P K) training draws with "
                         f"K = {k} per network (outputs={k}), got {draws.train.shape} with "
                         f"outputs={draws.outputs}")
    if samples is not None and samples != p:
        raise ValueError(f"samples: with f0='random' network s runs on sequence s: expected "
                         f"samples = {p} (the sampled networks), got {samples!r}")
    yt = None if y_test is None else np.asarray(y_test, dtype=np.float64)
    if yt is not None and (draws.test is None or draws.test.shape != (yt.shape[0], p * k)):
        raise ValueError(f"draws: expected ({yt.shape[0]}, {p * k}) test draws")
    groups = 3 * p + 1
    y_aug, f0_aug, yt_aug, ft_aug = independent_outputs(draws, y, yt)
    inp = lowrank_inputs(factor, y_aug, agent, w_exp, lr, steps, f0_aug, yt_aug, ft_aug,
                         acc_rows)
    r, q_count = inp.phi.shape[1], inp.w.shape[0]
    prep = prepare_features(factor, inp, form=form, reference=reference,
                            record_outputs=record_outputs, acc_rows=acc_rows, seed=seed,
                            labels=k, what=f"this low-rank prediction of one random network "
                            f"({p} networks on {p} mixing sequences, {groups} groups)",
                            hint="use fewer samples, a smaller rank, acc_rows=..., or "
                                 "f0='mean'")
    # sequences 0 .. p-1 for the networks and again for the mean network; E[W] p + 1 times
    data = dict(prep.data, **process_arrays(process, p, copies=2, expected_groups=p + 1))
    data["groups"] = group_columns(prep, None if yt is None else inp.ft - inp.yt,
                                   inp.counts, groups)
    sampler = supported_sampler(process)
    runner = (partial(init_independent_state, sampler=sampler, groups=groups),
              partial(run_independent_chunk, sampler=sampler, groups=groups))
    raw, rec_steps, phase, carry = run_features(
        jnp.zeros((q_count + int(reference), r, groups * k)), data, algo, inp.steps,
        q_count=q_count, central=reference, has_test=yt is not None,
        record_outputs=record_outputs, chunk=chunk, progress=progress,
        desc=f"low-rank {algo.name}, {p} networks on random mixing", runner=runner, groups=groups)
    inp_k = dataclasses.replace(  # the metadata and estimate: the mean network's columns
        inp, y=inp.y[:, -k:], f0=inp.f0[:, -k:], yt=None if yt is None else inp.yt[:, -k:],
        ft=None if yt is None else inp.ft[:, -k:])
    meta = lowrank_metadata(factor, algo, inp_k, padded=prep.padded, gram=prep.gram,
                            acc_rows=acc_rows, given_f0=False, metadata=metadata)
    meta["low_rank"]["f0_draws"] = dict(draws_info or {}, samples=p, seed=draws.seed)
    meta.update(process_metadata(process))
    trajs = [records_trajectory({key: v[:, g] for key, v in raw.items()}, q_count, reference,
                                rec_steps, phase, inp.lr_q, meta, prep.order,
                                float(carry[3][g])) for g in range(groups)]
    last = trajs[-1]
    mean = aggregate_sequences(trajs[p:2 * p], last, what="mixing")
    band = random_init.init_band_run(last, trajs[2 * p:3 * p], draws)
    traj = random_init.assemble(mean, trajs[:p], draws, None, over="init+mixing",
                                init_band=band)
    return dataclasses.replace(traj, metadata=dict(traj.metadata, path="low_rank"))


# long unit: predict_lowrank's steps for a process: checks, groups, run, assembly
def predict_lowrank_process(
    factor: LowRankFactor,
    y_train,
    agent,
    process,
    lr,
    steps,
    algorithm: str | Algorithm = "dgd",
    *,
    samples: int | None = None,
    f0_train=None,
    y_test=None,
    f0_test=None,
    reference: bool = True,
    record_outputs: bool = False,
    acc_rows: int | None = None,
    chunk: int = 25,
    progress: bool = False,
    seed: int = 0,
    metadata: dict | None = None,
    form: str = "auto",
) -> Trajectory:
    r""":func:`ntkdyn.lowrank.predict_lowrank` with a mixing process (module doc): a
    :class:`~ntkdyn.graphs.sequences.Periodic` sequence gives a
    :class:`~ntkdyn.trajectory.Trajectory`, a random one a
    :class:`~ntkdyn.trajectory.GossipTrajectory` over ``samples`` (default 64) sampled
    sequences plus ``.expected`` (the ``E[W]`` recursion) -- the same construction and
    seeds as the exact path, ``G = samples + 1`` column groups sharing every read.  The
    a-priori error estimate is that of the network mean, which follows centralised GD for
    any doubly stochastic sequence (``theory/low_rank.md`` section 3), computed with
    ``E[W]``."""
    algo = get_algorithm(algorithm)
    w_exp, process = require_process(process, "predict_lowrank")
    groups, samples = process_groups(process, samples)
    inp = lowrank_inputs(factor, y_train, agent, w_exp, lr, steps, f0_train, y_test,
                         f0_test, acc_rows)
    r, k, q_count = inp.phi.shape[1], inp.y.shape[1], inp.w.shape[0]
    m_test = 0 if inp.yt is None else inp.yt.shape[0]
    extra = 0 if groups == 1 else (
        evolve_bytes(inp.y.shape[0], m_test, r, q_count, groups * k, padded_rows=0,
                     acc_rows=acc_rows, record_outputs=record_outputs,
                     records=len(inp.steps))
        - evolve_bytes(inp.y.shape[0], m_test, r, q_count, k, padded_rows=0,
                       acc_rows=acc_rows, record_outputs=record_outputs,
                       records=len(inp.steps)))
    prep = prepare_features(factor, inp, form=form, reference=reference,
                            record_outputs=record_outputs, acc_rows=acc_rows, seed=seed,
                            extra_bytes=extra,
                            what=f"this low-rank prediction ({groups} mixing groups)",
                            hint="use fewer samples, a smaller rank, acc_rows=..., or "
                                 "record_outputs=False")
    data = dict(prep.data, **process_arrays(process, samples))
    sampler = supported_sampler(process)
    runner = (partial(init_process_state, sampler=sampler, groups=groups),
              partial(run_process_chunk, sampler=sampler, groups=groups))
    raw, rec_steps, phase, carry = run_features(
        jnp.zeros((q_count + int(reference), r, groups * k)), data, algo, inp.steps,
        q_count=q_count, central=reference, has_test=inp.yt is not None,
        record_outputs=record_outputs, chunk=chunk, progress=progress,
        desc=f"low-rank {algo.name}, {process.describe()['kind']} mixing", runner=runner,
        groups=groups)
    meta = lowrank_metadata(factor, algo, inp, padded=prep.padded, gram=prep.gram,
                            acc_rows=acc_rows, given_f0=f0_train is not None,
                            metadata=metadata)
    meta.update(process_metadata(process))
    trajs = [records_trajectory({key: v[:, g] for key, v in raw.items()}, q_count, reference,
                                rec_steps, phase, inp.lr_q, meta, prep.order,
                                float(carry[3][g])) for g in range(groups)]
    if not process.random:
        return trajs[0]
    from ntkdyn.dynamics.run import aggregate_sequences

    return aggregate_sequences(trajs[:-1], trajs[-1], what="mixing")


# ------------------------------------------------------------ a sweep of rates, one pass
def sweep_columns(data: dict, slots: np.ndarray, limits, k: int, groups: int) -> dict:
    r"""``data`` of one run over ``R`` rates and ``G`` mixing groups as ``G R`` column
    groups of ``K``, mixing group outer (``g R + i`` is group ``g`` at rate ``i``, so
    :func:`mix_groups` mixes each mixing group's ``R K`` columns by its own matrix): the
    rate of every slot and column ``(A, G R K)`` (:func:`~ntkdyn.lowrank.evolve.
    column_rates` tiled over the mixing groups) and the divergence limit of every column
    group ``(G R,)``.  ``slots``: ``(R, A)`` slot rates, ``limits``: ``(R,)``."""
    lr = np.tile(column_rates(slots, k), (1, groups))
    return dict(data, lr=jnp.asarray(lr),
                limit_per_step=jnp.asarray(np.tile(np.asarray(limits, float), groups)))


def sweep_rate_block(n: int, n_test: int, rank: int, agents: int, columns: int, rates: int,
                     **kw) -> int:
    """The most rates (at least 1, at most ``rates``) whose columns (``columns`` per rate:
    ``K`` times the mixing groups) fit in one pass of :func:`predict_lowrank_process_sweep`
    in the memory available: :func:`~ntkdyn.lowrank.evolve.evolve_bytes` with the larger
    of the two forms' step data (``max(N, (Q + 1) r)`` rows of ``r``), an upper bound of
    what :func:`~ntkdyn.lowrank.evolve.prepare_features` then checks.  ``kw``: the
    records' arguments of ``evolve_bytes``."""
    from ntkdyn._utils import memory

    rows = max(n, (agents + 1) * rank)
    kw = dict(kw, padded_rows=0)

    def need(b):
        return evolve_bytes(n, n_test, rank, agents, b * columns, **kw) + 8 * rows * rank

    return max(1, memory.largest_fitting(need, memory.available_memory_bytes(), rates))


def sweep_trajectories(inps, rates: int, groups: int, random: bool,
                       group_traj) -> list[Trajectory]:
    """Rate ``i``'s trajectory of a sweep whose columns are :func:`sweep_columns`'s
    (``G R`` groups, group ``g R + i`` mixing group ``g`` at rate ``i``):
    ``group_traj(inputs_i, column_group)`` builds each group's trajectory; with a random
    process the sampled sequences then ``E[W]`` are aggregated as
    :func:`predict_lowrank_process` does.  Shared by :func:`predict_lowrank_process_sweep`
    and :func:`ntkdyn.lowrank.cross_entropy.predict_lowrank_ce_sweep`."""
    from ntkdyn.dynamics.run import aggregate_sequences

    out = []
    for i, one in enumerate(inps):
        trajs = [group_traj(one, g * rates + i) for g in range(groups)]
        out.append(aggregate_sequences(trajs[:-1], trajs[-1], what="mixing") if random
                   else trajs[0])
    return out


# long unit: predict_lowrank_process's steps over R rates: checks, columns, run, assembly
def predict_lowrank_process_sweep(
    factor: LowRankFactor, y_train, agent, process, lrs, steps,
    algorithm: str | Algorithm = "dgd", *, samples: int | None = None, y_test=None,
    reference: bool = True, acc_rows: int | None = None, chunk: int = 25,
    progress: bool = False, seed: int = 0, metadata: dict | None = None,
    form: str = "auto", accuracies: str = "all", f0_train=None, f0_test=None,
    rate_block: int | None = None,
) -> list[Trajectory]:
    r""":func:`predict_lowrank_process` at every rate of ``lrs`` (each a scalar or one rate
    per agent) in **one** run: the ``G`` mixing groups (one for a periodic sequence;
    ``samples`` sampled sequences and ``E[W]`` for a random one) times the ``R`` rates are
    ``G R`` column groups of ``K`` in one state ``(A, r, G R K)`` (:func:`sweep_columns`),
    each group flagged for divergence on its own, so every read of the Gram matrices (or
    of the agents' rows) is shared by all of them.  Trajectory ``i`` equals
    ``predict_lowrank_process(..., lr=lrs[i])`` to round-off (same sequences, statuses and
    divergence steps).  ``accuracies="final"``: the accuracies only at the last record
    (:func:`~ntkdyn.lowrank.evolve.predict_lowrank_sweep`), which is what ``ntkdyn
    check``'s sweep reports.  ``rate_block``: at most this many rates per pass (default:
    as many as fit in the memory available, :func:`sweep_rate_block`); the results do not
    depend on it."""
    algo = get_algorithm(algorithm)
    if accuracies not in ("all", "final"):
        raise ValueError(f"accuracies: expected 'all' or 'final', got {accuracies!r}")
    check_lrs(lrs)
    check_rate_block(rate_block)
    w_exp, process = require_process(process, "predict_lowrank_sweep")
    groups, samples = process_groups(process, samples)
    inps = [lowrank_inputs(factor, y_train, agent, w_exp, lr, steps, f0_train, y_test,
                           f0_test, acc_rows) for lr in lrs]
    inp, rates = inps[0], len(inps)
    (n, r), k, q_count = inp.phi.shape, inp.y.shape[1], inp.w.shape[0]
    m_test = 0 if inp.yt is None else inp.yt.shape[0]
    kw = dict(padded_rows=0, acc_rows=acc_rows, records=len(inp.steps))
    block = rate_block or sweep_rate_block(n, m_test, r, q_count, k * groups, rates, **kw)
    if block < rates:  # one pass per block of rates, each as below
        call = partial(predict_lowrank_process_sweep, factor, y_train, agent, process,
                       steps=steps, algorithm=algo, samples=samples, y_test=y_test,
                       reference=reference, acc_rows=acc_rows, chunk=chunk,
                       progress=progress, seed=seed, metadata=metadata, form=form,
                       accuracies=accuracies, f0_train=f0_train, f0_test=f0_test,
                       rate_block=block)
        return [t for i in range(0, rates, block) for t in call(lrs=list(lrs[i:i + block]))]
    prep = prepare_features(
        factor, inp, form=form, reference=reference, record_outputs=False, acc_rows=acc_rows,
        seed=seed, extra_bytes=evolve_bytes(n, m_test, r, q_count, groups * rates * k, **kw)
        - evolve_bytes(n, m_test, r, q_count, k, **kw),
        what=f"this {rates}-rate low-rank sweep ({groups} mixing groups)",
        hint="use fewer rates or samples, a smaller rank, or acc_rows=...")
    curvature = float(factor.eigenvalues.max(initial=1.0))
    data = sweep_columns(dict(prep.data, **process_arrays(process, samples)),
                         np.stack([slot_rates(i.lr_q, reference) for i in inps]),
                         [divergence_limit(i.lr_q, prep.res, curvature, inp.counts)
                          for i in inps], k, groups)
    if accuracies == "final":
        data["final_accuracy_only"] = jnp.zeros(())
    cols, sampler = groups * rates, supported_sampler(process)
    raw, rec_steps, phase, carry = run_features(
        jnp.zeros((q_count + int(reference), r, cols * k)), data, algo, inp.steps,
        q_count=q_count, central=reference, has_test=inp.yt is not None,
        record_outputs=False, chunk=chunk, progress=progress,
        desc=f"low-rank {algo.name}, {rates} rates, {process.describe()['kind']} mixing",
        runner=(partial(init_process_state, sampler=sampler, groups=cols),
                partial(run_process_chunk, sampler=sampler, groups=cols)),
        groups=cols)
    finals = None if accuracies == "all" else final_accuracies(
        split_groups(algo.parameters(carry[0]), cols), prep.data, q_count, reference,
        inp.yt is not None)

    def group_traj(one, col):
        meta = lowrank_metadata(factor, algo, one, padded=prep.padded, gram=prep.gram,
                                acc_rows=acc_rows, given_f0=f0_train is not None,
                                metadata=metadata)
        meta.update(process_metadata(process))
        traj = records_trajectory({key: v[:, col] for key, v in raw.items()}, q_count,
                                  reference, rec_steps, phase, one.lr_q, meta, prep.order,
                                  float(carry[3][col]))
        if finals is not None and len(traj.steps):
            set_last_accuracies(traj, {key: v[col] for key, v in finals.items()}, q_count)
        return traj

    return sweep_trajectories(inps, rates, groups, process.random, group_traj)


__all__ = ["DEFAULT_SAMPLES", "group_columns", "group_records", "grouped_data",
           "independent_outputs", "init_independent_state", "init_process_state",
           "mix_groups", "predict_lowrank_process",
           "predict_lowrank_process_sweep", "predict_random_lowrank_gossip",
           "process_groups", "process_operators", "require_process",
           "run_independent_chunk", "run_process_chunk", "sweep_columns", "sweep_rate_block",
           "sweep_trajectories"]
