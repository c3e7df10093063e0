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


def _check_settings(caller: str, num_classes: int, k: int, chunk: int, temperature: float) -> None:
    if num_classes < 1 or k < 1 or chunk < 1 or not temperature > 0:
        raise ValueError(
            f"{caller}: need num_classes, k, chunk >= 1 and temperature > 0, got "
            f"num_classes={num_classes}, k={k}, chunk={chunk}, temperature={temperature}"
        )


def knn_predict(
    train_features,
    train_labels,
    query_features,
    num_classes: int,
    k: int = 200,
    temperature: float = 0.1,
    chunk: int = 1024,
) -> jax.Array:
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
        raise ValueError(
            f"knn_predict: features must be 2-D, got train {train_features.shape} and query {query_features.shape}"
        )
    if train_features.shape[1] != query_features.shape[1]:
        raise ValueError(
            f"knn_predict: feature dims differ: train {train_features.shape[1]} vs query {query_features.shape[1]}"
        )
    if train_labels.shape != (train_features.shape[0],):
        raise ValueError(
            f"knn_predict: train_labels shape {train_labels.shape} does not match "
            f"{train_features.shape[0]} train features"
        )
    if train_features.shape[0] == 0:
        raise ValueError("knn_predict: the train bank is empty")
    _check_settings("knn_predict", num_classes, k, chunk, temperature)
    num_queries = query_features.shape[0]
    if num_queries == 0:
        return jnp.zeros((0,), jnp.int32)
    k = min(int(k), train_features.shape[0])
    chunk = min(int(chunk), num_queries)
    padded = -(-num_queries // chunk) * chunk
    query_features = jnp.pad(query_features, ((0, padded - num_queries), (0, 0)))
    preds = _knn_predict_jit(
        train_features,
        train_labels.astype(jnp.int32),
        query_features,
        num_classes=int(num_classes),
        k=k,
        chunk=chunk,
        temperature=float(temperature),
    )
    return preds[:num_queries]


def knn_top1(
    train_features, train_labels, test_features, test_labels, num_classes: int, k: int = 200, temperature: float = 0.1
) -> float:
    """Top-1 accuracy of `knn_predict` on (test_features, test_labels): mean_q [pred_q = y_q], a Python float."""
    test_labels = np.asarray(test_labels)
    if test_labels.shape != (np.shape(test_features)[0],):
        raise ValueError(
            f"knn_top1: test_labels shape {test_labels.shape} does not match {np.shape(test_features)[0]} test features"
        )
    preds = np.asarray(
        knn_predict(train_features, train_labels, test_features, num_classes, k=k, temperature=temperature)
    )
    return float(np.mean(preds == test_labels)) if preds.size else float("nan")


# ----------------------------------------------------------------------------------------------------- on a mesh


@functools.lru_cache(maxsize=None)
def _sharded_knn_fn(mesh, num_classes: int, k: int, chunk: int):
    """Jitted kNN over a bank laid out [nb, B, D] and sharded P(None, batch axes) on ``mesh`` (knn_predict_sharded)."""
    from jax.sharding import PartitionSpec as P

    from ssljax import parallel

    axis = parallel.batch_axes(mesh)  # every device holds its own rows of the bank
    n = parallel.batch_shards(mesh)

    def local(bank, labels, num_valid, queries, temperature):
        # bank [nb, b, D] and labels [nb, b]: this device's rows of every block. Global row of (j, i): j B + d b + i.
        nb, b, dim = bank.shape
        d = jax.lax.axis_index(axis)
        row = jnp.arange(nb)[:, None] * (b * n) + d * b + jnp.arange(b)[None, :]
        valid = (row < num_valid).reshape(-1)
        bank = _l2_normalize(bank.reshape(-1, dim))
        labels = labels.reshape(-1)
        local_k = min(k, nb * b)  # a shard smaller than k contributes all its rows; n * local_k >= k still holds
        q_all = _l2_normalize(queries).reshape(-1, chunk, dim)

        def one_chunk(q):
            sims = jnp.where(valid[None, :], q @ bank.T, -jnp.inf)  # padding rows can never be neighbours
            top_sims, top_idx = jax.lax.top_k(sims, local_k)
            top_labels = labels[top_idx]
            # Every device's candidates, device-major: [chunk, n * local_k]; their top k is the global top k.
            cand_sims = jax.lax.all_gather(top_sims, axis, axis=1, tiled=True)
            cand_labels = jax.lax.all_gather(top_labels, axis, axis=1, tiled=True)
            top_sims, pick = jax.lax.top_k(cand_sims, k)
            top_labels = jnp.take_along_axis(cand_labels, pick, axis=1)
            weights = jnp.exp((top_sims - jnp.max(top_sims, axis=-1, keepdims=True)) / temperature)
            votes = jnp.sum(jax.nn.one_hot(top_labels, num_classes, dtype=jnp.float32) * weights[..., None], axis=1)
            return jnp.argmax(votes, axis=-1).astype(jnp.int32)

        return jax.lax.map(one_chunk, q_all).reshape(-1)

    sharded = P(None, axis)
    fn = parallel.per_device(local, mesh, in_specs=(sharded, sharded, P(), P(), P()), out_specs=P())
    return jax.jit(fn)


def knn_predict_sharded(
    bank,
    bank_labels,
    queries,
    num_classes: int,
    mesh,
    k: int = 200,
    temperature: float = 0.1,
    chunk: int = 1024,
    num_valid: int | None = None,
) -> jax.Array:
    """`knn_predict` with the bank sharded over the devices of ``mesh`` (every device its rows); the same predictions.

    Each device d scores every query against its rows X_d of the bank and keeps its own top k,
    T_d = topk_{i in X_d}(s_qi); the k nearest neighbours of the whole bank are topk(T_1 u ... u T_n) (an entry of
    the global top k is in the top k of its own shard), found after an all_gather of the T_d's values and labels.
    Votes and argmax are then those of `knn_predict`. Queries are replicated; memory per device is
    O(chunk * N / n). Ties between equal similarities are broken towards the lower row, as in `knn_predict`, for a
    flat bank.

    Args:
      bank: [N, D] features (any placement; padded to a multiple of the device count and sharded here), or the
        blocked layout of the evaluation features [nb, B, D] (block j holds rows jB .. jB + B - 1), sharded or not.
      bank_labels: [N] or [nb, B] integer labels, in the same layout as ``bank``.
      queries: [Q, D] features to classify.
      num_classes, k, temperature, chunk: as in `knn_predict` (k is clipped to the number of valid rows).
      num_valid: rows of the bank that are real (the first ``num_valid`` in row order); the others are padding and
        are never chosen. Default: all rows.

    Returns:
      int32 [Q] predicted labels (replicated on the mesh).
    """
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    from ssljax import parallel

    n = parallel.batch_shards(mesh)
    bank_labels = jnp.asarray(bank_labels) if not isinstance(bank_labels, jax.Array) else bank_labels
    if bank.ndim == 2:
        rows = bank.shape[0]
        if bank_labels.shape != (rows,):
            raise ValueError(
                f"knn_predict_sharded: bank_labels shape {bank_labels.shape} does not match {rows} bank features"
            )
        pad = -rows % n
        bank = jnp.pad(jnp.asarray(bank), ((0, pad), (0, 0)))[None]
        bank_labels = jnp.pad(bank_labels, (0, pad))[None]
        num_valid = rows if num_valid is None else num_valid
    elif bank.ndim != 3 or bank_labels.shape != bank.shape[:2] or bank.shape[1] % n:
        raise ValueError(
            f"knn_predict_sharded: need bank [N, D] or [nb, B, D] with labels [nb, B] and B a multiple "
            f"of {n} devices, got {bank.shape} and {bank_labels.shape}"
        )
    total = bank.shape[0] * bank.shape[1]
    num_valid = total if num_valid is None else int(num_valid)
    queries = jnp.asarray(queries)
    if queries.ndim != 2 or queries.shape[1] != bank.shape[-1]:
        raise ValueError(f"knn_predict_sharded: queries must be [Q, {bank.shape[-1]}], got {queries.shape}")
    if not 0 < num_valid <= total:
        raise ValueError(f"knn_predict_sharded: the bank has no valid rows (num_valid={num_valid}, rows={total})")
    _check_settings("knn_predict_sharded", num_classes, k, chunk, temperature)
    num_queries = queries.shape[0]
    if num_queries == 0:
        return jnp.zeros((0,), jnp.int32)
    chunk = min(int(chunk), num_queries)
    queries = jnp.pad(queries, ((0, -num_queries % chunk), (0, 0)))
    sharding = NamedSharding(mesh, P(None, parallel.batch_axes(mesh)))
    bank = jax.device_put(bank, sharding) if not _placed(bank, sharding) else bank
    bank_labels = bank_labels.astype(jnp.int32)
    bank_labels = jax.device_put(bank_labels, sharding) if not _placed(bank_labels, sharding) else bank_labels
    fn = _sharded_knn_fn(mesh, int(num_classes), min(int(k), num_valid), chunk)
    return fn(bank, bank_labels, jnp.int32(num_valid), queries, jnp.float32(temperature))[:num_queries]


def _placed(x, sharding) -> bool:
    """True when ``x`` is already laid out with ``sharding`` (then it is passed on as it is, even across hosts)."""
    return isinstance(x, jax.Array) and x.sharding.is_equivalent_to(sharding, x.ndim)
