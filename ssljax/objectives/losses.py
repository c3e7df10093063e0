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
