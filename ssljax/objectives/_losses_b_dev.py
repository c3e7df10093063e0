"""TEMPORARY development shim (deleted before hand-off): the section appended to losses.py, injected into it."""
from __future__ import annotations

import jax
import jax.numpy as jnp

from ssljax.objectives.losses import l2_normalize, nt_xent

# ---8<--- section start


# --- contrastive family B ---
# iSogCLR, Contrastive Clustering, G-SimCLR and DenseCL (objectives in isogclr.py, contrastive_clustering.py,
# gsimclr.py, densecl.py).

def nt_xent_mean(z_a: jax.Array, z_b: jax.Array, temperature: float) -> jax.Array:
    """NT-Xent averaged over the 2B anchors, (1/2B) sum_i l_i: the SimCLR paper's normalisation (and G-SimCLR's and
    Contrastive Clustering's instance loss), half of :func:`nt_xent`, which sums the two per-view means."""
    return 0.5 * nt_xent(z_a, z_b, temperature)


def isogclr_loss(z_a: jax.Array, z_b: jax.Array, tau: jax.Array, s_prev: jax.Array, u_prev: jax.Array, *,
                 gamma: float = 0.8, rho: float = 0.4, eta: float = 0.03, beta_u: float = 0.5,
                 tau_min: float = 0.05, tau_max: float = 1.0, grad_clip: float = 3.0,
                 variant: str = 'paper') -> tuple[jax.Array, dict]:
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
    sim = u @ u.T                                                     # [2B, 2B]
    pos = jnp.sum(u[:batch] * u[batch:], axis=-1)
    pos2 = jnp.concatenate([pos, pos])[:, None]                       # [2B, 1]
    neg = 1.0 - jnp.tile(jnp.eye(batch, dtype=jnp.float32), (2, 2))   # 0 on self and partner
    num_neg = 2 * batch - 2
    tau2 = jnp.concatenate([tau, tau]).astype(jnp.float32)[:, None]
    h = sim - pos2 if variant == 'paper' else sim
    scaled = jax.lax.stop_gradient(h) / tau2
    e = jnp.exp(scaled) * neg
    g = jnp.sum(e, axis=1) / num_neg                                  # [2B]
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


def cc_cluster_loss(p_a: jax.Array, p_b: jax.Array, temperature: float,
                    entropy_log_k: bool = False) -> tuple[jax.Array, dict]:
    """Contrastive Clustering's cluster-level loss (Li et al. 2021) on soft assignments p_a, p_b [B, K] (rows sum to 1).

    The K columns of each view are the cluster representations y_k^a, y_k^b in R^B; with their cosine similarity,
        contrast = (1 / 2K) sum over the 2K columns of -log( exp(s(y_k, y_k') / tau_C) / sum_{l != k} exp(s(y_k, y_l) / tau_C) )
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
    """MoCo's InfoNCE against a queue: mean_i -log( exp(q_i.k_i / tau) / (exp(q_i.k_i / tau) + sum_m exp(q_i.Q_m / tau)) )
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


def densecl_dense_loss(q_grid: jax.Array, k_grid: jax.Array, q_backbone: jax.Array, k_backbone: jax.Array,
                       queue: jax.Array, temperature: float) -> jax.Array:
    """DenseCL's dense loss (Wang et al. 2021): InfoNCE per query cell over N S cells.

    q_grid, k_grid [N, S, D]: dense projections of the query and key views (S = h w cells); q_backbone, k_backbone
    [N, S, C]: their backbone feature maps, which only choose the positive: cell s of image n is matched to key cell
    m(n, s) = :func:`densecl_match`; the negatives are the queue [K, D] of pooled key projections of earlier images.
        L_dense = mean_{n,s} -log( exp(r_ns.t_{n,m(n,s)} / tau) / (exp(r_ns.t_{n,m(n,s)} / tau) + sum_m exp(r_ns.Q_m / tau)) )
    r = n(q_grid), t = n(k_grid); keys, backbone features and queue carry no gradient.
    """
    match = densecl_match(jax.lax.stop_gradient(q_backbone), jax.lax.stop_gradient(k_backbone))
    r = l2_normalize(q_grid)
    t = jax.lax.stop_gradient(l2_normalize(k_grid))
    queue = jax.lax.stop_gradient(l2_normalize(queue))
    positive = jnp.sum(r * jnp.take_along_axis(t, match[..., None], axis=1), axis=-1)       # [N, S]
    logits = jnp.concatenate([positive[..., None], jnp.einsum('nsd,md->nsm', r, queue)], axis=-1) / temperature
    return -jnp.mean(jax.nn.log_softmax(logits, axis=-1)[..., 0])
# ---8<--- section end


def _inject():
    from ssljax.objectives import losses
    for name in ('nt_xent_mean', 'isogclr_loss', 'cc_cluster_loss', 'densecl_global_loss', 'densecl_match',
                 'densecl_dense_loss'):
        setattr(losses, name, globals()[name])


_inject()
