"""Weighted k-nearest-neighbour classifier on frozen features (the kNN monitor).

This is the monitor of InstDisc (Wu et al. 2018), also used by MoCo and solo-learn: features are L2-normalised,
each query finds its k most cosine-similar bank entries, and neighbour i votes for its label with weight
exp(s_i / temperature). The predicted class is the argmax of the summed votes.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np


def _l2_normalize(x: jax.Array, eps: float = 1e-12) -> jax.Array:
    """x / max(||x||_2, eps) along the last axis, in float32."""
    x = x.astype(jnp.float32)
    norm = jnp.sqrt(jnp.sum(x * x, axis=-1, keepdims=True))
    return x / jnp.maximum(norm, eps)


@functools.partial(jax.jit, static_argnames=("num_classes", "k", "chunk"))
def _knn_predict_jit(bank, bank_labels, queries, *, num_classes, k, chunk, temperature):
    bank = _l2_normalize(bank)
    queries = _l2_normalize(queries).reshape(-1, chunk, bank.shape[-1])

    def one_chunk(q):
        sims = q @ bank.T  # [chunk, N] cosine similarities
        top_sims, top_idx = jax.lax.top_k(sims, k)  # [chunk, k], sorted descending
        top_labels = bank_labels[top_idx]
        # Subtracting the per-query max similarity rescales all of a query's votes by the same positive factor,
        # so the argmax is unchanged while exp cannot overflow for small temperatures. The max is a reduction, not
        # top_sims[:, :1]: slicing top_k's output makes XLA CPU replace its TopK kernel by a full sort (20x slower).
        weights = jnp.exp((top_sims - jnp.max(top_sims, axis=-1, keepdims=True)) / temperature)
        votes = jnp.sum(jax.nn.one_hot(top_labels, num_classes, dtype=jnp.float32) * weights[..., None], axis=1)
        return jnp.argmax(votes, axis=-1).astype(jnp.int32)

    return jax.lax.map(one_chunk, queries).reshape(-1)


def knn_predict(train_features, train_labels, query_features, num_classes: int, k: int = 200,
                temperature: float = 0.1, chunk: int = 1024) -> jax.Array:
    """Weighted kNN predictions for each query.

    With n(x) = x / ||x||_2, s_qi = n(q) . n(x_i) over the bank x_1..x_N with labels y_i, and T = temperature:

        votes_q[c] = sum_{i in topk_i(s_qi)} exp(s_qi / T) [y_i = c],     pred_q = argmax_c votes_q[c].

    k is clipped to N. Queries are processed in chunks of fixed shape [chunk, D] (the last chunk is zero-padded and
    the padding dropped), so memory is O(chunk * N) and the function compiles once per (N, padded query count).

    Args:
      train_features: [N, D] bank features.
      train_labels: [N] integer labels in [0, num_classes).
      query_features: [Q, D] features to classify.
      num_classes: number of classes C.
      k: number of neighbours (clipped to N).
      temperature: vote temperature T > 0.
      chunk: number of queries per chunk (clipped to Q).

    Returns:
      int32 [Q] predicted labels.
    """
    train_features = jnp.asarray(train_features)
    query_features = jnp.asarray(query_features)
    train_labels = jnp.asarray(train_labels)
    if train_features.ndim != 2 or query_features.ndim != 2:
        raise ValueError(f"knn_predict: features must be 2-D, got train {train_features.shape} and query "
                         f"{query_features.shape}")
    if train_features.shape[1] != query_features.shape[1]:
        raise ValueError(f"knn_predict: feature dims differ: train {train_features.shape[1]} vs query "
                         f"{query_features.shape[1]}")
    if train_labels.shape != (train_features.shape[0],):
        raise ValueError(f"knn_predict: train_labels shape {train_labels.shape} does not match "
                         f"{train_features.shape[0]} train features")
    if train_features.shape[0] == 0:
        raise ValueError("knn_predict: the train bank is empty")
    if num_classes < 1 or k < 1 or chunk < 1 or not temperature > 0:
        raise ValueError(f"knn_predict: need num_classes, k, chunk >= 1 and temperature > 0, got "
                         f"num_classes={num_classes}, k={k}, chunk={chunk}, temperature={temperature}")
    num_queries = query_features.shape[0]
    if num_queries == 0:
        return jnp.zeros((0,), jnp.int32)
    k = min(int(k), train_features.shape[0])
    chunk = min(int(chunk), num_queries)
    padded = -(-num_queries // chunk) * chunk
    query_features = jnp.pad(query_features, ((0, padded - num_queries), (0, 0)))
    preds = _knn_predict_jit(train_features, train_labels.astype(jnp.int32), query_features,
                             num_classes=int(num_classes), k=k, chunk=chunk, temperature=float(temperature))
    return preds[:num_queries]


def knn_top1(train_features, train_labels, test_features, test_labels, num_classes: int, k: int = 200,
             temperature: float = 0.1) -> float:
    """Top-1 accuracy of `knn_predict` on (test_features, test_labels): mean_q [pred_q = y_q], a Python float."""
    test_labels = np.asarray(test_labels)
    if test_labels.shape != (np.shape(test_features)[0],):
        raise ValueError(f"knn_top1: test_labels shape {test_labels.shape} does not match "
                         f"{np.shape(test_features)[0]} test features")
    preds = np.asarray(knn_predict(train_features, train_labels, test_features, num_classes, k=k,
                                   temperature=temperature))
    return float(np.mean(preds == test_labels)) if preds.size else float("nan")
