r"""One random network on the low-rank path: ``f_0`` drawn from a low-rank NNGP factor.

The exact path (:mod:`ntkdyn.dynamics.random_init`) draws ``f_0 = L z`` with
``L L^T = K_ZZ`` (Cholesky of the NNGP on the pooled inputs ``Z = [X; X*]``, ``N + M``
rows): impossible at data-set scale (``(N + M)^2`` memory, ``(N + M)^3`` flops).  Here:

**The draws** (:func:`nngp_draws`).  ``K_ZZ ~ Psi Psi^T`` of rank ``s`` from column
blocks of the NNGP on ``Z`` (the same randomly pivoted Cholesky / Nystrom as the NTK
factor, :func:`ntkdyn.lowrank.factor.factorize`, landmarks among train *and* test
inputs), and the residual diagonal ``d = diag(K_ZZ) - rowsum(Psi^2) >= 0`` (the
Nystrom residual is PSD, so ``d`` is its diagonal).  Each draw is

    g = Psi z_1 + sqrt(d) * z_2,     z_1 ~ N(0, I_s),  z_2 ~ N(0, I_{N+M}) independent,

so ``g ~ N(0, Psi Psi^T + diag(d))``:

* **exact**: every marginal variance, ``Var g_i = K_ZZ[i, i]`` (by construction, to
  round-off), the mean (0), and the covariance carried by ``Psi`` (``K_ZZ`` itself when
  ``s`` reaches the numerical rank of ``K_ZZ``: then the draws are exact in law);
* **approximate**: the correlations ``E = K_ZZ - Psi Psi^T`` off the diagonal (the
  discarded NNGP spectrum, whose diagonal part is put back as independent noise).
  ``trace(E) / trace(K_ZZ)`` (``metadata["low_rank"]["f0_draws"]["relative_residual"]``)
  measures it.  The independent part ``sqrt(d) z_2`` on the training inputs is a
  high-frequency residual that training on the factor's ``r`` coordinates cannot fit;
  on the test inputs it is the part of ``f_0`` the training inputs do not predict.

**The dynamics.**  For the squared loss every schedule is affine in ``f_0``, on the
factor as on the full kernel, so, as on the exact path, one run carries ``K + P``
columns: the mean network (``f_0 = 0``, target ``Y``) and ``P`` responses (``f_0 = g_j``,
target 0); sampled network ``s`` has output ``k`` equal to mean column ``k`` plus
response column ``(s + k) mod P`` (:func:`ntkdyn.dynamics.solver.network_columns`).
Every recorded quadratic form of network ``s`` (losses, distances) is a sum of entries
of the ``(K + P) x (K + P)`` column Gram matrix ``(Phi x + R)^T W (Phi x + R)``
``= x^T G x + x^T L + L^T x + R^T W R`` (``G = Phi^T W Phi``, ``L = Phi^T W R``, both
once): ``sum_k M_kk + 2 M_{k, K+j} + M_{K+j, K+j}``, cost ``(K + P)^2 r`` per slot and
record; accuracies read each network's ``K`` outputs (``f_0 + Phi x`` of a group of slots
in one product, the networks' argmax by :func:`network_argmax` without forming the
``(rows, P, K)`` outputs).

Cost: the NNGP factor (as the NTK factor, on ``N + M`` rows) and ``K + P`` columns per
step instead of ``K``; memory ``(N + M) s`` for ``Psi`` (freed after the draws) and the
state's columns (:func:`networks_bytes`).
"""

from __future__ import annotations

import dataclasses
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from ntkdyn.algorithms import Algorithm, get_algorithm
from ntkdyn.dynamics.random_init import InitDraws, assemble
from ntkdyn.dynamics.solver import network_columns
from ntkdyn.engine import scan_records
from ntkdyn.graphs.sequences import process_arrays, process_metadata, supported_sampler
from ntkdyn.lowrank.evolve import (
    divergence_check,
    init_state,
    lowrank_inputs,
    lowrank_metadata,
    lowrank_operators,
    prepare_features,
    records_trajectory,
    run_features,
)
from ntkdyn.lowrank.factor import KernelColumns, LowRankFactor, factorize
from ntkdyn.trajectory import RandomNetworkTrajectory

EXACT = jax.lax.Precision.HIGHEST

#: what ``metadata["low_rank"]["f0_draws"]["exact"]`` / ``["approximate"]`` say
EXACT_WORDS = ("every marginal variance diag(K_nngp) (and the mean); the whole covariance "
               "when the NNGP factor reaches its numerical rank")
APPROX_WORDS = ("the correlations carried by the discarded NNGP spectrum "
                "(K_nngp - Psi Psi^T off the diagonal; relative_residual = its trace / "
                "trace(K_nngp))")


def draw_variance(psi: np.ndarray, resid: np.ndarray) -> np.ndarray:
    """Marginal variance of each entry of the draws: ``rowsum(Psi^2) + d``."""
    return np.einsum("ij,ij->i", psi, psi) + resid


def nngp_draws(source: KernelColumns, n_train: int, samples: int, seed: int, *,
               rank: int, method: str = "rpcholesky", block: int = 128
               ) -> tuple[InitDraws, dict]:
    """``samples`` draws of ``f_0`` on the pooled rows of ``source`` (``[train; test]``, the
    first ``n_train`` training, in the caller's order) from the rank-``rank`` NNGP factor
    plus the residual diagonal (module doc); ``z_1``, ``z_2`` from
    ``jax.random.normal`` with ``jax.random.split(PRNGKey(seed))``.  Returns the draws and
    their facts (rank, residual trace, what is exact and what approximate)."""
    if isinstance(samples, bool) or not isinstance(samples, int | np.integer) or samples < 1:
        raise ValueError(f"samples: expected an integer >= 1, got {samples!r}")
    rank = int(min(rank, source.n))
    fac = factorize(source, rank, method=method, block=block, seed=seed)
    diag = np.asarray(source.diagonal(), dtype=np.float64)
    psi = fac.phi
    resid = np.maximum(diag - np.einsum("ij,ij->i", psi, psi), 0.0)
    k1, k2 = jax.random.split(jax.random.PRNGKey(int(seed)))
    z1 = np.asarray(jax.random.normal(k1, (psi.shape[1], int(samples)), dtype=np.float64))
    z2 = np.asarray(jax.random.normal(k2, (len(diag), int(samples)), dtype=np.float64))
    g = psi @ z1 + np.sqrt(resid)[:, None] * z2
    var = draw_variance(psi, resid)
    info = {"nngp_rank": fac.rank, "landmarks": int(len(fac.landmarks)),
            "method": method, "trace": fac.trace, "residual_trace": float(resid.sum()),
            "relative_residual": float(resid.sum() / max(fac.trace, 1e-300)),
            "max_variance_error": float(np.max(np.abs(var - diag) / np.maximum(diag, 1e-300))),
            "exact": EXACT_WORDS, "approximate": APPROX_WORDS,
            "seconds": fac.info.get("seconds_total")}
    draws = InitDraws(train=g[:n_train], test=g[n_train:] if len(g) > n_train else None,
                      seed=int(seed), jitter=0.0)
    return draws, info


def networks_bytes(n: int, n_test: int, rank: int, agents: int, outputs: int,
                   samples: int, *, acc_rows: int | None = None, nngp_rank: int = 0) -> int:
    """Bytes of the random-network terms beyond :func:`ntkdyn.lowrank.evolve_bytes` (called
    with ``K + P`` columns): the NNGP factor on ``N + M`` rows with its ``2 s`` landmarks
    (:func:`ntkdyn.lowrank.factor.factor_bytes`), the draws, the column Gram matrices
    ``(Q + 2) (K + P)^2`` (train, test, objective, local) and one slot's outputs of every
    network on the accuracy rows and the test set,
    ``3 (N_acc + M) (K + P + P K)`` (float64), and the outputs of one group of slots
    (:func:`slot_group`, at most ``GROUP_BYTES``)."""
    from ntkdyn.lowrank.factor import factor_bytes

    c = outputs + samples
    acc = n if acc_rows is None else acc_rows
    b = 2 * (n + n_test) * samples + 4 * (agents + 2) * c * c + 3 * (
        acc + n_test) * (c + samples * outputs)
    extra = factor_bytes(n + n_test, 0, min(n + n_test, 2 * nngp_rank)) if nngp_rank else 0
    group = min(GROUP_BYTES, 8 * MAX_GROUP * (acc + n_test) * c)  # a group's outputs
    return int(8 * b + extra + group)


# --------------------------------------------------------------------------- records
def _col_gram(x, gram, lin, cc):
    """``(Phi x + R)^T W (Phi x + R)`` for every slot of ``x`` (A, r, C) -> (A, C, C)."""
    gx = jnp.einsum("rs,asc->arc", gram, x, precision=EXACT)
    xl = jnp.einsum("arc,rd->acd", x, lin, precision=EXACT)
    return jnp.einsum("arc,ard->acd", x, gx, precision=EXACT) + xl + \
        jnp.swapaxes(xl, -1, -2) + cc


def _split(m, k: int, idx):
    """``(mean (...,), networks (..., P))`` sums of a column Gram ``m`` (..., C, C)."""
    diag = jnp.diagonal(m, axis1=-2, axis2=-1)
    mean = diag[..., :k].sum(-1)
    cross = m[..., jnp.arange(k)[None, :], k + idx].sum(-1)
    return mean, mean[..., None] + 2.0 * cross + diag[..., k + idx].sum(-1)


def network_argmax(out, k: int):
    r"""``argmax_j (out[..., j] + out[..., K + (s + j) mod P])`` for every sampled network
    ``s`` (:func:`ntkdyn.dynamics.solver.network_columns`) from the outputs ``out``
    (..., K + P): ``(..., P)`` indices (as ``out.dtype``), equal to ``jnp.argmax`` of the
    gathered ``(..., P, K)`` outputs (the first maximum on ties, a NaN counts as the
    maximum) without forming them: a running maximum over ``j`` of static column slices of
    ``[R, R, ...]`` (``R`` the P response columns, so ``R[:, (s + j) mod P]`` is column
    ``s + j`` of the tiling); ``j`` replaces the running maximum ``b`` where
    ``not (v <= b) and b == b`` (``v > b``, or ``v`` a NaN while ``b`` is not).  About twice
    as fast as the gather and ``argmax`` on XLA:CPU (all in one elementwise loop)."""
    p = out.shape[-1] - k
    resp = out[..., k:]
    tiled = jnp.concatenate([resp] * (1 + -(-(k - 1) // p)), axis=-1) if k > 1 else resp
    best = out[..., 0:1] + tiled[..., 0:p]
    arg = jnp.zeros(best.shape, dtype=out.dtype)
    for j in range(1, k):
        v = out[..., j:j + 1] + tiled[..., j:j + p]
        upd = ~(v <= best) & (best == best)
        best = jnp.where(upd, v, best)
        arg = jnp.where(upd, jnp.asarray(j, dtype=out.dtype), arg)
    return arg


#: the slots whose outputs one product computes (:func:`slot_group`): at most this many bytes
#: of outputs, and at most ``MAX_GROUP`` slots
GROUP_BYTES = 2**27
MAX_GROUP = 16


def slot_group(rows: int, columns: int, slots: int) -> int:
    """Slots per product in :func:`_accs`: ``Phi`` (rows x r) is read once per group
    instead of once per slot (at XL-data, 60,000 rows and 42 columns: 6 slots, the train
    accuracies' products about 1.5x faster than one slot at a time); the group size is
    evened out over the groups so that the last is padded by as few zero slots as possible."""
    most = max(1, min(slots, MAX_GROUP, GROUP_BYTES // max(8 * rows * columns, 1)))
    groups = -(-slots // most)
    return int(-(-slots // groups))  # as even as possible: the fewest zero slots padded


def _accs(x, phi, f0, labels, k: int):
    """Accuracy of the mean network ``(A,)`` and of every network ``(A, P)`` for the slots
    of ``x`` (A, r, C): outputs ``f0 + phi [x_a, ..., x_{a+G-1}]`` of ``G`` slots
    (:func:`slot_group`) in one product, group by group (``lax.map``; zero slots pad the
    last group), so at most ``G rows C`` outputs are alive, not ``A`` times ``rows C``;
    the networks' argmax by :func:`network_argmax` (no ``(rows, P, K)`` array)."""
    a, r, c = x.shape
    g = slot_group(phi.shape[0], c, a)
    groups = -(-a // g)
    xg = jnp.concatenate([x, jnp.zeros((groups * g - a, r, c), x.dtype)]) \
        .reshape(groups, g, r, c)

    def one(xs):
        prod = jnp.matmul(phi, jnp.moveaxis(xs, 0, 1).reshape(r, g * c), precision=EXACT)
        out = f0[0][:, None, :] + prod.reshape(-1, g, c)  # (rows, G, C)
        hit_m = jnp.argmax(out[..., :k], -1) == labels[:, None]
        hit = network_argmax(out, k) == labels[:, None, None].astype(out.dtype)
        return (jnp.mean(hit_m.astype(out.dtype), axis=0),
                jnp.mean(hit.astype(out.dtype), axis=0))

    acc_m, acc_n = jax.lax.map(one, xg)
    return acc_m.reshape(-1)[:a], acc_n.reshape(groups * g, -1)[:a]


def _local(xa, data):
    """Per-agent column Gram matrices of the residual on its own rows (Q, C, C)."""
    if "grams" in data:
        g = data["grams"]
        gx = jnp.einsum("qrs,qsc->qrc", g, xa, precision=EXACT)
        xl = jnp.einsum("qrc,qrd->qcd", xa, data["lins"], precision=EXACT)
        return (jnp.einsum("qrc,qrd->qcd", xa, gx, precision=EXACT) + xl
                + jnp.swapaxes(xl, -1, -2) + data["net_local_cc"])
    if isinstance(data["phi"], tuple):
        outs = [jnp.matmul(p, xa[q], precision=EXACT) + rq
                for q, (p, rq) in enumerate(zip(data["phi"], data["res"], strict=True))]
        return jnp.stack([o.T @ o for o in outs])
    o = jnp.einsum("qnr,qrc->qnc", data["phi"], xa, precision=EXACT) + data["res"]
    return jnp.einsum("qnc,qnd->qcd", o, o, precision=EXACT)


def _norms(v, k, idx):
    m, nets = _split(jnp.einsum("arc,ard->acd", v, v, precision=EXACT), k, idx)
    return jnp.sqrt(jnp.maximum(m, 0.0)), jnp.sqrt(jnp.maximum(nets, 0.0))


# long unit: one record of the mean network and of every sampled network, key by key
def _record_networks(x, data, *, q_count, central, has_test, record_outputs, k, networks):
    """Records of the mean network (keys of :func:`ntkdyn.lowrank.evolve` records) and,
    under ``"networks/<key>"`` with a trailing ``P`` axis, of the ``P`` sampled networks."""
    idx = jnp.asarray(network_columns(k, networks))
    n, a = data["n"], x.shape[0]
    rec, nets = {}, {}

    def put(key, pair):
        rec[key], nets[key] = pair

    tr = data["train"]
    m_tr, n_tr = _split(_col_gram(x, tr["gram"], tr["lin"], data["net_train_cc"]), k, idx)
    put("train_loss", (m_tr / (2 * n), n_tr / (2 * n)))
    ob = data["obj"]
    m_ob, n_ob = _split(_col_gram(x, ob["gram"], ob["lin"], data["net_obj_cc"]), k, idx)
    put("objective", (m_ob / 2, n_ob / 2))
    xa = x[:q_count]
    m_lo, n_lo = _split(_local(xa, data), k, idx)
    inv_n = data["inv_n"]
    put("local_loss", (0.5 * m_lo * inv_n, 0.5 * n_lo * inv_n[:, None]))
    put("param_dist", _norms(x, k, idx))
    xm = xa.mean(axis=0)
    put("consensus_dist", _norms(xa - xm, k, idx))
    if central:
        put("central_dist", _norms(xa - x[q_count], k, idx))
    mm, mn = _split(_col_gram(xm[None], tr["gram"], tr["lin"], data["net_train_cc"]), k, idx)
    put("mean_model_train_loss", (mm[0] / (2 * n), mn[0] / (2 * n)))
    mean_x = jnp.concatenate([x, xm[None]], axis=0)
    acc_m, acc_n = _accs(mean_x, data["acc_phi"], data["acc_f0"], data["acc_labels"], k)
    put("train_acc", (acc_m[:a], acc_n[:a]))
    put("mean_model_train_acc", (acc_m[a], acc_n[a]))
    if record_outputs:
        rec["train_outputs"] = (data["f0"] + jnp.einsum(
            "nr,arc->anc", data["phi_all"], x, precision=EXACT))[..., :k]
    if has_test:
        st = data["test"]
        m_te, n_te = _split(_col_gram(mean_x, st["gram"], st["lin"], data["net_test_cc"]),
                            k, idx)
        m_te, n_te = m_te / (2 * data["m"]), n_te / (2 * data["m"])
        put("test_loss", (m_te[:a], n_te[:a]))
        put("mean_model_test_loss", (m_te[a], n_te[a]))
        acc_m, acc_n = _accs(mean_x, data["phi_test"], data["f0_test"], data["labels_test"],
                             k)
        put("test_acc", (acc_m[:a], acc_n[:a]))
        put("mean_model_test_acc", (acc_m[a], acc_n[a]))
        if record_outputs:
            rec["test_outputs"] = data["f0_test"][..., :k] + jnp.einsum(
                "nr,ark->ank", data["phi_test"], x[..., :k], precision=EXACT)
    rec.update({f"networks/{key}": v for key, v in nets.items()})
    return rec


@partial(jax.jit, static_argnames=("algorithm", "q_count", "central", "has_test",
                                   "record_outputs", "k", "networks", "sampler"))
def run_chunk_networks(carry, n_steps, data, *, algorithm, q_count, central, has_test,
                       record_outputs, k, networks, sampler=None):
    """:func:`ntkdyn.lowrank.evolve.run_chunk` recording the mean and sampled networks; with
    a periodic sequence's ``sampler`` each step takes that step's mixing matrix
    (:func:`ntkdyn.lowrank.gossip.process_operators`, one group: the ``K + P`` columns share
    the sequence, as on the exact path)."""
    params = algorithm.parameters
    checked = divergence_check(params, data["limit_per_step"])
    if sampler is None:
        ops = lowrank_operators(data, q_count, central)

        def operators(t):
            return ops
    else:
        from ntkdyn.lowrank.gossip import process_operators

        def operators(t):
            return process_operators(data, t, q_count=q_count, central=central,
                                     sampler=sampler, mixes_per_step=algorithm.mixes_per_step,
                                     groups=1)

    def record(st, x):
        rec = _record_networks(params(x), data, q_count=q_count, central=central,
                               has_test=has_test, record_outputs=record_outputs, k=k,
                               networks=networks)
        rec["diverged"] = st[2]
        return st, rec

    return scan_records(carry, n_steps, algorithm=algorithm, operators=operators,
                        check=checked, record=record)


def network_data(data: dict, phi_s: np.ndarray, res: np.ndarray, offsets, counts,
                 res_test: np.ndarray | None) -> dict:
    """The column Gram constants ``R^T W R`` the network records need (train, objective,
    test, per agent for the Gram form), ``res = f_0 - Y`` with ``K + P`` columns, rows
    sorted by agent."""
    q_count = len(offsets) - 1
    wts = np.repeat(1.0 / counts / q_count, counts)
    out = {"net_train_cc": jnp.asarray(res.T @ res),
           "net_obj_cc": jnp.asarray(res.T @ (res * wts[:, None]))}
    if "grams" in data:
        out["net_local_cc"] = jnp.asarray(np.stack(
            [res[offsets[q]:offsets[q + 1]].T @ res[offsets[q]:offsets[q + 1]]
             for q in range(q_count)]))
    if res_test is not None:
        out["net_test_cc"] = jnp.asarray(res_test.T @ res_test)
    return out


def assemble_networks(raw: dict, q_count: int, central: bool, steps, phase, lr_q,
                      meta: dict, order, div_at: float, draws: InitDraws):
    """Raw records -> :class:`~ntkdyn.trajectory.RandomNetworkTrajectory` (mean network,
    ``P`` sampled networks; band over initialisations)."""
    p = draws.samples
    nets_raw = {key.split("/", 1)[1]: v for key, v in raw.items() if key.startswith("networks/")}
    mean_raw = {key: v for key, v in raw.items() if not key.startswith("networks/")}
    mean = records_trajectory(mean_raw, q_count, central, steps, phase, lr_q, meta, order,
                              div_at)
    nets = []
    for s in range(p):
        one = {key: v[..., s] for key, v in nets_raw.items()}
        one["diverged"] = raw["diverged"]
        nets.append(records_trajectory(one, q_count, central, steps, phase, lr_q, meta,
                                       order, div_at))
    traj = assemble(mean, nets, draws, None, over="init")
    return dataclasses.replace(traj, metadata=dict(traj.metadata, path="low_rank"))


def _runner(process, k: int, p: int):
    """``(init_state, run_chunk)`` of :func:`run_features`: static mixing, or a periodic
    sequence (``process``; :mod:`ntkdyn.lowrank.gossip`)."""
    if process is None:
        return init_state, partial(run_chunk_networks, k=k, networks=p)
    from ntkdyn.lowrank.gossip import init_process_state

    sampler = supported_sampler(process)
    return (partial(init_process_state, sampler=sampler, groups=1),
            partial(run_chunk_networks, k=k, networks=p, sampler=sampler))


# long unit: predict_lowrank's steps with K + P columns and the networks' records
def predict_random_lowrank(
    factor: LowRankFactor, draws: InitDraws, y_train, agent, mixing, lr, steps,
    algorithm: str | Algorithm = "dgd", *, y_test=None, reference: bool = True,
    record_outputs: bool = False, acc_rows: int | None = None, chunk: int = 25,
    progress: bool = False, seed: int = 0, metadata: dict | None = None,
    form: str = "auto", draws_info: dict | None = None,
) -> RandomNetworkTrajectory:
    """One random network on the low-rank factor (module doc): the mean network and
    ``P = draws.samples`` sampled networks (``draws.train`` ``(N, P)``, ``draws.test``
    ``(M, P)``, the caller's order) in one run of ``K + P`` columns; arguments as
    :func:`ntkdyn.lowrank.predict_lowrank` (``record_outputs``: the mean network's outputs,
    ``traj.mean_network.train_outputs``).  ``draws_info`` goes to
    ``metadata["low_rank"]["f0_draws"]``.  ``mixing`` may be a periodic sequence
    (:func:`ntkdyn.graphs.periodic`): the ``K + P`` columns are mixed by ``W_e`` at every
    event, as the exact path's shared cyclic columns (:mod:`ntkdyn.lowrank.gossip`); a
    random one (independent networks, network ``s`` on sequence ``s``) is
    :func:`ntkdyn.lowrank.gossip.predict_random_lowrank_gossip`."""
    from ntkdyn.graphs.sequences import is_process, resolve_mixing

    algo = get_algorithm(algorithm)
    process = None
    if is_process(mixing):
        mixing, process = resolve_mixing(mixing, name="mixing")
        if process.random:
            raise ValueError("mixing: a random sequence with one random network runs "
                             "independent networks (lowrank.gossip.predict_random_lowrank_"
                             "gossip); predict_random_lowrank takes a static matrix or a "
                             "periodic sequence")
    y = np.asarray(y_train, dtype=np.float64)
    n, k, p = factor.phi.shape[0], y.shape[1] if y.ndim == 2 else 0, draws.samples
    if draws.train.shape != (n, p):
        raise ValueError(f"draws: expected ({n}, P) training draws, got {draws.train.shape}")
    yt_aug = ft_aug = None
    if y_test is not None:
        yt = np.asarray(y_test, dtype=np.float64)
        if draws.test is None or draws.test.shape != (yt.shape[0], p):
            raise ValueError(f"draws: expected ({yt.shape[0]}, {p}) test draws")
        yt_aug = np.concatenate([yt, np.zeros((yt.shape[0], p))], axis=1)
        ft_aug = np.concatenate([np.zeros_like(yt), draws.test], axis=1)
    inp = lowrank_inputs(factor, np.concatenate([y, np.zeros((n, p))], axis=1), agent, mixing,
                         lr, steps, np.concatenate([np.zeros_like(y), draws.train], axis=1),
                         yt_aug, ft_aug, acc_rows)
    r, q_count = factor.rank, inp.w.shape[0]
    m_test = 0 if inp.yt is None else inp.yt.shape[0]
    prep = prepare_features(
        factor, inp, form=form, reference=reference, record_outputs=record_outputs,
        acc_rows=acc_rows, seed=seed, labels=k,
        extra_bytes=networks_bytes(n, m_test, r, q_count, k, p, acc_rows=acc_rows),
        what="this low-rank prediction of one random network",
        hint="use a smaller rank, fewer samples, acc_rows=..., or f0='mean'")
    data = prep.data
    data.update(network_data(data, prep.phi_s, prep.res, prep.offsets, inp.counts,
                             None if inp.yt is None else inp.ft - inp.yt))
    if process is not None:
        data.update(process_arrays(process, None))
    runner = _runner(process, k, p)
    raw, rec_steps, phase, carry = run_features(
        jnp.zeros((q_count + int(reference), r, k + p)), data, algo, inp.steps,
        q_count=q_count, central=reference, has_test=inp.yt is not None,
        record_outputs=record_outputs, chunk=chunk, progress=progress,
        desc=f"low-rank {algo.name}, {p} networks", runner=runner)
    # the metadata (and its error estimate) describe the mean network's K columns
    inp_k = dataclasses.replace(inp, y=inp.y[:, :k], f0=inp.f0[:, :k],
                                yt=None if inp.yt is None else inp.yt[:, :k],
                                ft=None if inp.ft is None else inp.ft[:, :k])
    meta = lowrank_metadata(factor, algo, inp_k, padded=prep.padded, gram=prep.gram,
                            acc_rows=acc_rows, given_f0=False, metadata=metadata)
    meta["low_rank"]["f0_draws"] = dict(draws_info or {}, samples=p, seed=draws.seed)
    meta.update(process_metadata(process))
    return assemble_networks(raw, q_count, reference, rec_steps, phase, inp.lr_q, meta,
                             prep.order, float(carry[3]), draws)


__all__ = ["APPROX_WORDS", "EXACT_WORDS", "assemble_networks", "draw_variance", "network_data",
           "networks_bytes", "nngp_draws", "predict_random_lowrank", "run_chunk_networks"]
