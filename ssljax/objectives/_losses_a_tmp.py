import jax
import jax.numpy as jnp

from ssljax.objectives.losses import *  # noqa: F401,F403  (temporary, during development)
from ssljax.objectives.losses import l2_normalize


# --- contrastive family A ---------------------------------------------------------------------------------------------
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


def mix_hard_negatives(q: jax.Array, hard: jax.Array, idx_i: jax.Array, idx_j: jax.Array, alpha: jax.Array,
                       idx_k: jax.Array, beta: jax.Array) -> jax.Array:
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


def mochi_negatives(rng: jax.Array, q: jax.Array, queue: jax.Array, n_hard: int, n_mix: int,
                    n_mix_query: int) -> jax.Array:
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
    (``weight_norm`` 'mean', the paper's, = 2 - B softmax_i); 'sum' divides by the sum instead (2 - softmax_i, as the
    raminnakhli/Decoupled-Contrastive-Learning code does). Gradients flow through w, as both codes do.
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


def triplet_loss(p: jax.Array, t: jax.Array, gamma: float = 2.0, margin: float = 100.0, negative: str = 'median',
                 truncate: tuple[int, int] = (1, 10), group: int = 0) -> jax.Array:
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
        raise ValueError(f'triplet_loss: truncated ranks [{lo}, {hi}) need at least {hi} negatives per anchor, '
                         f'have {n_neg}')
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
