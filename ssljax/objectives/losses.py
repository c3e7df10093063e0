"""Losses as plain functions of arrays.

Each function here takes arrays and returns a scalar (or arrays), with no Flax module, no config and no state, so a
notebook can call, compose and differentiate them directly. All arithmetic is done in float32 whatever the input dtype.
Batches are the *global* batch: under jit over a device mesh, XLA inserts the collectives, so negatives and batch
statistics span every device.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def l2_normalize(x: jax.Array, axis: int = -1, eps: float = 1e-12) -> jax.Array:
    """n(x) = x / max(||x||, eps), in float32."""
    x = x.astype(jnp.float32)
    return x / jnp.maximum(jnp.linalg.norm(x, axis=axis, keepdims=True), eps)


def cosine_similarity(a: jax.Array, b: jax.Array) -> jax.Array:
    """s(a_i, b_i) = <n(a_i), n(b_i)> for each row i; shape [B]."""
    return jnp.sum(l2_normalize(a) * l2_normalize(b), axis=-1)


def nt_xent(z_a: jax.Array, z_b: jax.Array, temperature: float) -> jax.Array:
    """SimCLR's normalised-temperature cross-entropy over the 2B embeddings of two views.

    With u = n([z_a; z_b]) (2B rows) and s_ik = <u_i, u_k> / tau, anchor i with positive partner j(i) (the other view of
    the same image) has  l_i = -log( exp(s_ij) / sum_{k != i} exp(s_ik) ).  Returns the sum of the two per-view means,
    (1/B) sum_{i in a} l_i + (1/B) sum_{i in b} l_i, as the reference code does. Every other embedding in the global
    batch is a negative, and gradients flow through all of them.
    """
    batch = z_a.shape[0]
    u = l2_normalize(jnp.concatenate([z_a, z_b], axis=0))
    logits = (u @ u.T) / temperature
    logits = jnp.where(jnp.eye(2 * batch, dtype=bool), -jnp.inf, logits)  # k != i
    partner = jnp.concatenate([jnp.arange(batch, 2 * batch), jnp.arange(batch)])
    log_prob = jax.nn.log_softmax(logits, axis=-1)
    per_anchor = -jnp.take_along_axis(log_prob, partner[:, None], axis=-1)[:, 0]
    return per_anchor[:batch].mean() + per_anchor[batch:].mean()


def normalized_mse(p: jax.Array, z: jax.Array) -> jax.Array:
    """BYOL's regression loss for one view order: mean_i ||n(p_i) - n(z_i)||^2 = mean_i (2 - 2 s(p_i, z_i)).

    The caller applies the stop-gradient to the target z.
    """
    return jnp.mean(2.0 - 2.0 * cosine_similarity(p, z))


def byol_loss(p_a: jax.Array, p_b: jax.Array, z_a: jax.Array, z_b: jax.Array) -> jax.Array:
    """Symmetrised BYOL loss: normalized_mse(p_a, sg z_b) + normalized_mse(p_b, sg z_a).

    p_* are online predictions, z_* target projections (gradients are stopped here).
    """
    z_a, z_b = jax.lax.stop_gradient(z_a), jax.lax.stop_gradient(z_b)
    return normalized_mse(p_a, z_b) + normalized_mse(p_b, z_a)


def simsiam_loss(p_a: jax.Array, p_b: jax.Array, z_a: jax.Array, z_b: jax.Array) -> jax.Array:
    """SimSiam's symmetrised negative cosine: -1/2 [mean_i s(p_a_i, sg z_b_i) + mean_i s(p_b_i, sg z_a_i)].

    p_* are the predictions, z_* the projections of the same online network; gradients are stopped at z here.
    Ranges over [-1, 1]; -1 when each prediction points along the other view's projection.
    """
    z_a, z_b = jax.lax.stop_gradient(z_a), jax.lax.stop_gradient(z_b)
    return -0.5 * (cosine_similarity(p_a, z_b).mean() + cosine_similarity(p_b, z_a).mean())


def off_diagonal(m: jax.Array) -> jax.Array:
    """The d(d - 1) off-diagonal entries of a square matrix, as a flat vector (row-major order)."""
    d = m.shape[0]
    return m.reshape(-1)[:-1].reshape(d - 1, d + 1)[:, 1:].reshape(-1)


def standardize(z: jax.Array, eps: float = 1e-5) -> jax.Array:
    """Per-dimension standardisation over the batch: (z - mean) / sqrt(var + eps), biased variance, float32.

    This is BatchNorm in train mode without affine parameters (what Barlow Twins' reference applies before the
    cross-correlation), over the rows given, i.e. the global batch.
    """
    z = z.astype(jnp.float32)
    mean = z.mean(axis=0)
    var = jnp.mean(jnp.square(z - mean), axis=0)
    return (z - mean) / jnp.sqrt(var + eps)


def cross_correlation(z_a: jax.Array, z_b: jax.Array, eps: float = 1e-5) -> jax.Array:
    """Barlow Twins' C = standardize(z_a)^T standardize(z_b) / B, float32 [D, D]; C_ii is in [-1, 1] (eps aside)."""
    return standardize(z_a, eps).T @ standardize(z_b, eps) / z_a.shape[0]


def barlow_twins_loss(z_a: jax.Array, z_b: jax.Array, lambd: float = 0.0051, eps: float = 1e-5) -> jax.Array:
    """Barlow Twins: L = sum_i (1 - C_ii)^2 + lambda sum_{i != j} C_ij^2 with C = :func:`cross_correlation`.

    Each branch is standardised per dimension over the (global) batch with the biased variance plus ``eps`` = 1e-5
    (BatchNorm1d(affine=False) in train mode, as in the reference), and C is divided by B. lambda = 0.0051 is the
    published value for D = 8192.
    """
    c = cross_correlation(z_a, z_b, eps)
    on_diag = jnp.sum(jnp.square(1.0 - jnp.diagonal(c)))
    off_diag = jnp.sum(jnp.square(off_diagonal(c)))
    return on_diag + lambd * off_diag


def vicreg_loss(
    z_a: jax.Array,
    z_b: jax.Array,
    sim_coeff: float = 25.0,
    std_coeff: float = 25.0,
    cov_coeff: float = 1.0,
    eps: float = 1e-4,
    variance_views: str = 'mean',
) -> tuple[jax.Array, dict]:
    """VICReg: -> (sim_coeff * inv + std_coeff * var + cov_coeff * cov, {'invariance', 'variance', 'covariance'}).

    With B rows (the global batch) and D dimensions, as in the reference code:
        inv = mean_{i,d} (z_a - z_b)^2                                   (MSE over all B x D entries)
        var = 1/2 sum_{z in (z_a, z_b)} mean_d relu(1 - sqrt(Var_d(z) + eps))
        cov = sum_{z in (z_a, z_b)} sum_{i != j} Cov(z)_ij^2 / D
    Var and Cov are unbiased (divided by B - 1). ``variance_views`` 'mean' is that 1/2 (facebookresearch/vicreg
    main_vicreg.py); 'sum' drops it (solo-learn's ``variance_loss``: the two views' terms added, twice the value at
    the same std_coeff). The returned terms are unweighted; all float32.
    """
    if variance_views not in ('mean', 'sum'):
        raise ValueError(f"vicreg_loss: variance_views must be 'mean' or 'sum', got {variance_views!r}")
    z_a, z_b = z_a.astype(jnp.float32), z_b.astype(jnp.float32)
    batch, dim = z_a.shape
    invariance = jnp.mean(jnp.square(z_a - z_b))

    def var_cov(z):
        z = z - z.mean(axis=0)
        std = jnp.sqrt(jnp.sum(jnp.square(z), axis=0) / (batch - 1) + eps)
        cov = z.T @ z / (batch - 1)
        return jnp.mean(jax.nn.relu(1.0 - std)), jnp.sum(jnp.square(off_diagonal(cov))) / dim

    var_a, cov_a = var_cov(z_a)
    var_b, cov_b = var_cov(z_b)
    variance = (0.5 if variance_views == 'mean' else 1.0) * (var_a + var_b)
    covariance = cov_a + cov_b
    total = sim_coeff * invariance + std_coeff * variance + cov_coeff * covariance
    return total, {'invariance': invariance, 'variance': variance, 'covariance': covariance}


def dino_loss(student_logits, teacher_logits, center: jax.Array, student_temp: float, teacher_temp) -> jax.Array:
    """DINO's cross-entropy from the centred, sharpened teacher to the student, averaged over view pairs.

    ``student_logits``: V arrays [B, K] (all views, global ones first); ``teacher_logits``: the teacher's outputs on
    the global views, T arrays [B, K] (T = 2), where teacher view t and student view t are the same image crop;
    ``center`` [K] or [1, K]. With q_t = softmax((teacher_t - center) / teacher_temp) (gradient stopped) and
    log p_v = log_softmax(student_v / student_temp):
        L = 1 / #pairs  sum_{t < T} sum_{v < V, v != t}  mean_i ( - sum_k q_t[i, k] log p_v[i, k] )
    with #pairs = T V - T (the same view is never its own target), as DINO's code does. ``teacher_temp`` may be a
    traced scalar (the warm-up schedule).
    """
    student_logits, teacher_logits = list(student_logits), list(teacher_logits)
    if len(teacher_logits) > len(student_logits):
        raise ValueError(f'dino_loss: {len(teacher_logits)} teacher views but only {len(student_logits)} student views')
    center = jnp.asarray(center, jnp.float32)
    targets = [
        jax.lax.stop_gradient(jax.nn.softmax((t.astype(jnp.float32) - center) / teacher_temp, axis=-1))
        for t in teacher_logits
    ]
    log_probs = [jax.nn.log_softmax(s.astype(jnp.float32) / student_temp, axis=-1) for s in student_logits]
    total, pairs = 0.0, 0
    for t, q in enumerate(targets):
        for v, logp in enumerate(log_probs):
            if v == t:
                continue
            total = total + jnp.mean(-jnp.sum(q * logp, axis=-1))
            pairs += 1
    if pairs == 0:
        raise ValueError('dino_loss needs at least two views (one teacher view and another student view)')
    return total / pairs


# --- contrastive family B ---
# iSogCLR, Contrastive Clustering, G-SimCLR and DenseCL (objectives in isogclr.py, contrastive_clustering.py,
# gsimclr.py, densecl.py).


def nt_xent_mean(z_a: jax.Array, z_b: jax.Array, temperature: float) -> jax.Array:
    """NT-Xent averaged over the 2B anchors, (1/2B) sum_i l_i: the SimCLR paper's normalisation (and G-SimCLR's and
    Contrastive Clustering's instance loss), half of :func:`nt_xent`, which sums the two per-view means."""
    return 0.5 * nt_xent(z_a, z_b, temperature)


def isogclr_loss(
    z_a: jax.Array,
    z_b: jax.Array,
    tau: jax.Array,
    s_prev: jax.Array,
    u_prev: jax.Array,
    *,
    gamma: float = 0.8,
    rho: float = 0.4,
    eta: float = 0.03,
    beta_u: float = 0.5,
    tau_min: float = 0.05,
    tau_max: float = 1.0,
    grad_clip: float = 3.0,
    variant: str = 'paper',
) -> tuple[jax.Array, dict]:
    """iSogCLR (Qiu et al. 2023): the surrogate loss and the per-sample updates of (s_i, tau_i, u_i) for one batch.

    Rows i < B of the batch carry their own temperature tau_i and moving estimates s_i (0: never visited), u_i.
    With u = n([z_a; z_b]), sim_jk = <u_j, u_k>, anchor r (either view of sample i) has the 2B - 2 negatives
    N_r = every row but r and its partner, pos_i = <u_i, u_{B+i}>, and h_rj = sim_rj - pos_i ('paper': the
    objective tau_i log mean_j exp(h_rj / tau_i) + rho tau_i) or h_rj = sim_rj ('code': both released codes,
    zhqiu/contrastive-learning-iSogCLR and LibAUC GCLoss_v1, drop the positive from the exponent). Then
        g_r = mean_{j in N_r} exp(sg h_rj / tau_i),    s_r = (1 - gamma) s_i + gamma g_r  (gamma = 1 at a first visit)
        w_rj = exp(sg h_rj / tau_i) / s_r                                                     (no gradient)
        loss_r = mean_{j in N_r} w_rj (sim_rj - pos_i)   ('paper')   or   mean_j w_rj sim_rj - pos_i   ('code')
        L = (1/B) sum_i (loss_i + loss_{B+i})                                          (the two views summed)
        d_r = log s_r + rho - mean_{j in N_r} w_rj sg h_rj / tau_i,   d_i = clip((d_i + d_{B+i}) / 2, -c, c)
        s_i <- (s_i + s_{B+i}) / 2,   u_i <- (1 - beta_u) u_i + beta_u d_i,   tau_i <- clip(tau_i - eta u_i, min, max)
    ``tau``, ``s_prev``, ``u_prev``: float32 [B]. Returns (L, {'s', 'tau', 'u': the new rows [B], 'grad_tau': d}).
    """
    if variant not in ('paper', 'code'):
        raise ValueError(f"isogclr_loss: unknown variant {variant!r}; known: 'paper', 'code'")
    batch = z_a.shape[0]
    if batch < 2:
        raise ValueError(f'isogclr_loss needs at least 2 samples (2B - 2 negatives), got {batch}')
    u = l2_normalize(jnp.concatenate([z_a, z_b], axis=0))
    sim = u @ u.T  # [2B, 2B]
    pos = jnp.sum(u[:batch] * u[batch:], axis=-1)
    pos2 = jnp.concatenate([pos, pos])[:, None]  # [2B, 1]
    neg = 1.0 - jnp.tile(jnp.eye(batch, dtype=jnp.float32), (2, 2))  # 0 on self and partner
    num_neg = 2 * batch - 2
    tau2 = jnp.concatenate([tau, tau]).astype(jnp.float32)[:, None]
    h = sim - pos2 if variant == 'paper' else sim
    scaled = jax.lax.stop_gradient(h) / tau2
    e = jnp.exp(scaled) * neg
    g = jnp.sum(e, axis=1) / num_neg  # [2B]
    s_prev = s_prev.astype(jnp.float32)
    rate = jnp.concatenate([jnp.where(s_prev > 0, gamma, 1.0)] * 2)
    s_view = (1.0 - rate) * jnp.concatenate([s_prev, s_prev]) + rate * g
    w = e / s_view[:, None]
    if variant == 'paper':
        per_row = jnp.sum(w * (sim - pos2), axis=1) / num_neg
    else:
        per_row = jnp.sum(w * sim, axis=1) / num_neg - pos2[:, 0]
    loss = jnp.sum(per_row) / batch
    d = jnp.log(s_view) + rho - jnp.sum(w * scaled, axis=1) / num_neg
    grad_tau = jnp.clip(0.5 * (d[:batch] + d[batch:]), -grad_clip, grad_clip)
    s_new = 0.5 * (s_view[:batch] + s_view[batch:])
    u_new = (1.0 - beta_u) * u_prev.astype(jnp.float32) + beta_u * grad_tau
    tau_new = jnp.clip(tau.astype(jnp.float32) - eta * u_new, tau_min, tau_max)
    new = {'s': s_new, 'tau': tau_new, 'u': u_new, 'grad_tau': grad_tau}
    return loss, jax.tree.map(jax.lax.stop_gradient, new)


def cc_cluster_loss(
    p_a: jax.Array, p_b: jax.Array, temperature: float, entropy_log_k: bool = False
) -> tuple[jax.Array, dict]:
    """Contrastive Clustering's cluster-level loss (Li et al. 2021) on soft assignments p_a, p_b [B, K] (rows sum to 1).

    The K columns of each view are the cluster representations y_k^a, y_k^b in R^B; with their cosine similarity,
        contrast = (1 / 2K) sum over the 2K columns of
                   -log( exp(s(y_k, y_k') / tau_C) / sum_{l != k} exp(s(y_k, y_l) / tau_C) )
    (NT-Xent over columns, :func:`nt_xent_mean` of p_a^T, p_b^T), P^v(k) = sum_i p_v[i, k] / sum_{i,k} p_v[i, k] and
        L = contrast - H(Y),   H(Y) = -sum_k [P^a(k) log P^a(k) + P^b(k) log P^b(k)]     (the paper)
    ``entropy_log_k`` adds 2 log K (Yunfan-Li/Contrastive-Clustering's code: log K - H(P^v) per view, >= 0), which
    changes the value, not the gradient. Returns (L, {'cluster_contrast', 'cluster_entropy'}).
    """
    p_a, p_b = p_a.astype(jnp.float32), p_b.astype(jnp.float32)
    k = p_a.shape[1]
    if k < 2:
        raise ValueError(f'cc_cluster_loss needs at least 2 clusters, got {k}')
    contrast = nt_xent_mean(p_a.T, p_b.T, temperature)

    def entropy(p):
        marginal = jnp.sum(p, axis=0) / jnp.sum(p)
        return -jnp.sum(marginal * jnp.log(marginal))

    ent = entropy(p_a) + entropy(p_b)
    loss = contrast - ent + (2.0 * jnp.log(float(k)) if entropy_log_k else 0.0)
    return loss, {'cluster_contrast': contrast, 'cluster_entropy': ent}


def densecl_global_loss(q: jax.Array, k: jax.Array, queue: jax.Array, temperature: float) -> jax.Array:
    """MoCo's InfoNCE against a queue:
        mean_i -log( exp(q_i.k_i / tau) / (exp(q_i.k_i / tau) + sum_m exp(q_i.Q_m / tau)) )
    with q, k, Q rows L2-normalised here; keys ``k`` [N, D] and ``queue`` [K, D] carry no gradient."""
    q = l2_normalize(q)
    k, queue = jax.lax.stop_gradient(l2_normalize(k)), jax.lax.stop_gradient(l2_normalize(queue))
    logits = jnp.concatenate([jnp.sum(q * k, axis=-1, keepdims=True), q @ queue.T], axis=-1) / temperature
    return -jnp.mean(jax.nn.log_softmax(logits, axis=-1)[:, 0])


def densecl_match(q_backbone: jax.Array, k_backbone: jax.Array) -> jax.Array:
    """DenseCL's correspondence: for each query cell s of image n, the key cell argmax_t <n(f_q[n, s]), n(f_k[n, t])>
    of highest backbone-feature cosine similarity (first on ties). Inputs [N, S, C]; returns int32 [N, S]."""
    sim = jnp.einsum('nsc,ntc->nst', l2_normalize(q_backbone), l2_normalize(k_backbone))
    return jnp.argmax(sim, axis=-1).astype(jnp.int32)


def densecl_dense_loss(
    q_grid: jax.Array,
    k_grid: jax.Array,
    q_backbone: jax.Array,
    k_backbone: jax.Array,
    queue: jax.Array,
    temperature: float,
) -> jax.Array:
    """DenseCL's dense loss (Wang et al. 2021): InfoNCE per query cell over N S cells.

    q_grid, k_grid [N, S, D]: dense projections of the query and key views (S = h w cells); q_backbone, k_backbone
    [N, S, C]: their backbone feature maps, which only choose the positive: cell s of image n is matched to key cell
    m(n, s) = :func:`densecl_match`; the negatives are the queue [K, D] of pooled key projections of earlier images.
        L_dense = mean_{n,s} -log( e_ns / (e_ns + sum_m exp(r_ns.Q_m / tau)) ),  e_ns = exp(r_ns.t_{n,m(n,s)} / tau)
    r = n(q_grid), t = n(k_grid); keys, backbone features and queue carry no gradient.
    """
    match = densecl_match(jax.lax.stop_gradient(q_backbone), jax.lax.stop_gradient(k_backbone))
    r = l2_normalize(q_grid)
    t = jax.lax.stop_gradient(l2_normalize(k_grid))
    queue = jax.lax.stop_gradient(l2_normalize(queue))
    positive = jnp.sum(r * jnp.take_along_axis(t, match[..., None], axis=1), axis=-1)  # [N, S]
    logits = jnp.concatenate([positive[..., None], jnp.einsum('nsd,md->nsm', r, queue)], axis=-1) / temperature
    return -jnp.mean(jax.nn.log_softmax(logits, axis=-1)[..., 0])


# --- contrastive family A ---
# MoCo v2 / v3, MoCHi, DCL / DCLW, median / truncated triplet. Inputs are raw embeddings (normalised here) of the
# global batch unless a docstring says otherwise; keys, queues and targets are stop-gradient inside the function.


def moco_infonce(q: jax.Array, k: jax.Array, queue: jax.Array, temperature, extra_negatives=None) -> jax.Array:
    """MoCo's InfoNCE against a queue: mean_i -log softmax([q_i.k_i, q_i.Q_1, ..., q_i.Q_K, q_i.h_i1, ...] / tau)_0.

    ``q`` [B, D] queries (gradient flows), ``k`` [B, D] their positive keys, ``queue`` [K, D] negatives shared by every
    query, ``extra_negatives`` [B, M, D] (optional) per-query negatives (MoCHi's synthetic points). All are
    L2-normalised here; k, queue and extra negatives are stop-gradient (keys come from the momentum encoder).
    """
    q = l2_normalize(q)
    k = jax.lax.stop_gradient(l2_normalize(k))
    queue = jax.lax.stop_gradient(l2_normalize(queue))
    pos = jnp.sum(q * k, axis=-1, keepdims=True)
    logits = [pos, q @ queue.T]
    if extra_negatives is not None:
        extra = jax.lax.stop_gradient(l2_normalize(extra_negatives))
        logits.append(jnp.einsum('bd,bmd->bm', q, extra))
    logits = jnp.concatenate(logits, axis=1) / temperature
    return -jnp.mean(jax.nn.log_softmax(logits, axis=-1)[:, 0])


def mocov3_loss(q: jax.Array, k: jax.Array, temperature) -> jax.Array:
    """MoCo v3's ctr(q, k) = 2 tau * mean_i -log( exp(q_i.k_i / tau) / sum_j exp(q_i.k_j / tau) ).

    Keys k_j of the whole (global) batch are the negatives of q_i; k is stop-gradient; q, k L2-normalised here. The
    factor 2 tau is the reference's (moco-v3 builder.py ``contrastive_loss``).
    """
    q = l2_normalize(q)
    k = jax.lax.stop_gradient(l2_normalize(k))
    logits = (q @ k.T) / temperature
    return 2.0 * temperature * -jnp.mean(jnp.diagonal(jax.nn.log_softmax(logits, axis=-1)))


def hardest_negatives(q: jax.Array, queue: jax.Array, n_hard: int) -> jax.Array:
    """The ``n_hard`` queue entries most similar to each query, most similar first: float32 [B, n_hard, D]."""
    q = l2_normalize(q)
    queue = l2_normalize(queue)
    _, idx = jax.lax.top_k(q @ queue.T, n_hard)
    return queue[idx]


def mix_hard_negatives(
    q: jax.Array,
    hard: jax.Array,
    idx_i: jax.Array,
    idx_j: jax.Array,
    alpha: jax.Array,
    idx_k: jax.Array,
    beta: jax.Array,
) -> jax.Array:
    """MoCHi's synthetic negatives for each query, from its hardest negatives ``hard`` [B, N, D] (given draws).

    For query b: h_bm = n(alpha_bm n_{b,i_bm} + (1 - alpha_bm) n_{b,j_bm})   (m < s, mixing two hard negatives)
                 h'_bm = n(beta_bm q_b + (1 - beta_bm) n_{b,k_bm})           (m < s', mixing the query in)
    ``idx_i``, ``idx_j``, ``alpha`` are [B, s]; ``idx_k``, ``beta`` [B, s']. Returns stop-gradient [B, s + s', D].
    """
    q = jax.lax.stop_gradient(l2_normalize(q))
    hard = jax.lax.stop_gradient(hard)
    take = lambda idx: jnp.take_along_axis(hard, idx[..., None], axis=1)  # noqa: E731  [B, m, D]
    mixed = alpha[..., None] * take(idx_i) + (1.0 - alpha[..., None]) * take(idx_j)
    with_query = beta[..., None] * q[:, None, :] + (1.0 - beta[..., None]) * take(idx_k)
    return jax.lax.stop_gradient(l2_normalize(jnp.concatenate([mixed, with_query], axis=1)))


def mochi_negatives(
    rng: jax.Array, q: jax.Array, queue: jax.Array, n_hard: int, n_mix: int, n_mix_query: int
) -> jax.Array:
    """MoCHi (Kalantidis et al. 2020): s = ``n_mix`` and s' = ``n_mix_query`` synthetic negatives per query.

    The N = ``n_hard`` queue entries most similar to q are its hard negatives; indices are drawn uniformly among them,
    alpha ~ U(0, 1) and beta ~ U(0, 0.5) (beta < 0.5 keeps the query's share below the negative's), then
    :func:`mix_hard_negatives`. Returns stop-gradient [B, s + s', D].
    """
    b = q.shape[0]
    ki, kj, ka, kk, kb = jax.random.split(rng, 5)
    idx_i = jax.random.randint(ki, (b, n_mix), 0, n_hard)
    idx_j = jax.random.randint(kj, (b, n_mix), 0, n_hard)
    alpha = jax.random.uniform(ka, (b, n_mix))
    idx_k = jax.random.randint(kk, (b, n_mix_query), 0, n_hard)
    beta = 0.5 * jax.random.uniform(kb, (b, n_mix_query))
    hard = hardest_negatives(jax.lax.stop_gradient(q), queue, n_hard)
    return mix_hard_negatives(q, hard, idx_i, idx_j, alpha, idx_k, beta)


def dcl_loss(z_a: jax.Array, z_b: jax.Array, temperature, sigma=None, weight_norm: str = 'mean') -> jax.Array:
    """Decoupled contrastive loss (Yeh et al. 2022), summed over both directions; DCLW with ``sigma``.

    With u = n(z_a), v = n(z_b) (B rows each) and s(x, y) = <x, y>, for direction (u, v):
        L_i = -w_i s(u_i, v_i) / tau + log sum_{j != i} [exp(s(u_i, u_j) / tau) + exp(s(u_i, v_j) / tau)]
    (the positive is not in the denominator), L = mean_i L_i(u, v) + mean_i L_i(v, u). DCL: w_i = 1. DCLW (von
    Mises-Fisher weighting, ``sigma`` > 0): w_i = 2 - exp(s(u_i, v_i) / sigma) / mean_j exp(s(u_j, v_j) / sigma)
    (``weight_norm`` 'mean', the paper's, = 2 - B softmax_i: also what raminnakhli/Decoupled-Contrastive-Learning, a
    third-party PyTorch implementation, computes at its HEAD 0b9b76d, and lightly's ``negative_mises_fisher_weights``);
    'sum' divides by the sum instead (2 - softmax_i, weights near 2: that repository's code only at commit 50991ef,
    reverted to the B softmax form the next day). Gradients flow through w, as in raminnakhli's code; lightly
    detaches the weights (w carries no gradient there).
    """
    if weight_norm not in ('mean', 'sum'):
        raise ValueError(f"dcl_loss: weight_norm must be 'mean' or 'sum', got {weight_norm!r}")
    u, v = l2_normalize(z_a), l2_normalize(z_b)
    batch = u.shape[0]
    eye = jnp.eye(batch, dtype=bool)

    def one_way(x, y):
        pos = jnp.sum(x * y, axis=-1)
        if sigma is not None:
            soft = jax.nn.softmax(pos / sigma)
            pos = pos * (2.0 - (batch if weight_norm == 'mean' else 1.0) * soft)
        neg = jnp.concatenate([jnp.where(eye, -jnp.inf, x @ x.T), jnp.where(eye, -jnp.inf, x @ y.T)], axis=1)
        return jnp.mean(-pos / temperature + jax.nn.logsumexp(neg / temperature, axis=1))

    return one_way(u, v) + one_way(v, u)


def triplet_loss(
    p: jax.Array,
    t: jax.Array,
    gamma: float = 2.0,
    margin: float = 100.0,
    negative: str = 'median',
    truncate: tuple[int, int] = (1, 10),
    group: int = 0,
) -> jax.Array:
    """Median / truncated triplet loss (Wang et al. 2021), one view order: mean_i max(0, gamma d_ap - d_an + margin).

    Distances d_ij = -2 <n(p_i), n(t_j)> between online predictions p [B, D] and targets t [B, D] (stop-gradient);
    d_ap = d_ii. The negatives of anchor i are t_j, j != i, in its group: consecutive blocks of ``group`` rows of
    the batch (0: the whole batch). Sorting anchor i's negative distances ascending (most similar first), d_an is
    'median':    the element at 0-based rank floor((n - 1) / 2) of the n negatives (the lower median, as torch.median)
    'truncated': the mean of ranks ``truncate`` = [lo, hi), i.e. the 2nd..10th most similar by default (the released
                 code's TripletLossHead)
    gamma 2 and margin 100 are the paper's (the margin keeps every hinge active, so the loss is linear in d).
    """
    if negative not in ('median', 'truncated'):
        raise ValueError(f"triplet_loss: negative must be 'median' or 'truncated', got {negative!r}")
    batch = p.shape[0]
    group = batch if group <= 0 else group
    if batch % group:
        raise ValueError(f'triplet_loss: batch {batch} is not a multiple of the group size {group}')
    n_neg = group - 1
    lo, hi = truncate
    if negative == 'truncated' and not 0 <= lo < hi <= n_neg:
        raise ValueError(
            f'triplet_loss: truncated ranks [{lo}, {hi}) need at least {hi} negatives per anchor, have {n_neg}'
        )
    if n_neg < 1:
        raise ValueError('triplet_loss needs at least 2 samples per group')
    p = l2_normalize(p).reshape(batch // group, group, -1)
    t = jax.lax.stop_gradient(l2_normalize(t)).reshape(batch // group, group, -1)

    def per_group(pg, tg):
        d = -2.0 * pg @ tg.T
        d_ap = jnp.diagonal(d)
        neg = jnp.sort(jnp.where(jnp.eye(group, dtype=bool), jnp.inf, d), axis=1)[:, :n_neg]
        d_an = neg[:, (n_neg - 1) // 2] if negative == 'median' else jnp.mean(neg[:, lo:hi], axis=1)
        return jax.nn.relu(gamma * d_ap - d_an + margin)

    return jnp.mean(jax.vmap(per_group)(p, t))
