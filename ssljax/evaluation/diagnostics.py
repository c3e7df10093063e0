"""Representation diagnostics: effective rank, alignment / uniformity, collapse, eigen-alignment, clustering.

Notation: n(x) = x / ||x||_2 row-wise. The array functions (rankme .. eigen_alignment) are pure, jit-able and compute
in float32; the clustering functions run on the host (scipy / scikit-learn).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def _normalize(z: jax.Array, eps: float = 1e-12) -> jax.Array:
    z = jnp.asarray(z, jnp.float32)
    return z / jnp.maximum(jnp.linalg.norm(z, axis=-1, keepdims=True), eps)


def rankme(z, eps: float = 1e-7) -> jax.Array:
    """RankMe effective rank of a batch of embeddings (Garrido et al. 2023).

    With sigma_1..sigma_m the singular values of z [N, D] (m = min(N, D)):
        p_k = sigma_k / sum_j sigma_j + eps,     RankMe(z) = exp(-sum_k p_k log p_k).
    Equals r (up to eps) when z has r equal non-zero singular values; 1 for a rank-one (collapsed) z.
    """
    sigma = jnp.linalg.svd(jnp.asarray(z, jnp.float32), compute_uv=False)
    p = sigma / jnp.maximum(jnp.sum(sigma), 1e-30) + eps
    return jnp.exp(-jnp.sum(p * jnp.log(p)))


def alignment(za, zb, alpha: float = 2) -> jax.Array:
    """Alignment of positive pairs (Wang & Isola 2020): mean_i ||n(za_i) - n(zb_i)||_2^alpha; 0 is perfect."""
    sq = jnp.sum((_normalize(za) - _normalize(zb)) ** 2, axis=-1)
    # sq ** (alpha / 2) rather than norm ** alpha: no sqrt, so alpha = 2 stays differentiable at identical pairs.
    return jnp.mean(sq ** (alpha / 2))


def uniformity(z, t: float = 2) -> jax.Array:
    """Uniformity (Wang & Isola 2020): log mean_{i != j} exp(-t ||n(z_i) - n(z_j)||_2^2); lower is more uniform.

    Computed as a logsumexp over the N(N-1) off-diagonal pairs, so it is finite even when all pairs are far apart.
    Needs N >= 2.
    """
    zn = _normalize(z)
    n = zn.shape[0]
    if n < 2:
        raise ValueError(f"uniformity: needs at least 2 embeddings, got {n}")
    # ||a - b||^2 = 2 - 2 a.b for unit vectors; clip tiny negative round-off.
    sq = jnp.maximum(2.0 - 2.0 * zn @ zn.T, 0.0)
    logits = jnp.where(jnp.eye(n, dtype=bool), -jnp.inf, -t * sq)
    return jax.nn.logsumexp(logits) - jnp.log(n * (n - 1.0))


def feature_std(z) -> jax.Array:
    """Collapse monitor (as in SimSiam): mean over dimensions d of std_i(n(z)_{i,d}) (population std).

    About 1/sqrt(D) for embeddings spread over the sphere, 0 when all embeddings are the same direction.
    """
    return jnp.mean(jnp.std(_normalize(z), axis=0))


def eigen_alignment(W, F):
    """Eigen-alignment of a predictor W with a symmetric matrix F (DirectPred analysis, Tian et al. 2021).

    With F = sum_j s_j u_j u_j^T (s_1 >= s_2 >= ...), returns (s, c) where
        c_j = <W u_j, u_j> / (||W u_j|| ||u_j||)      (cosine between W u_j and u_j).
    c_j = 1 for all j whenever W shares F's eigenvectors with positive eigenvalues (W = F, W = sqrt(F) for
    positive-definite F); c_j < 1 when W rotates u_j. A W u_j of zero length gives c_j = 0.

    Returns:
      eigenvalues of F in descending order [D], cosines [D] in the same order.
    """
    W = jnp.asarray(W, jnp.float32)
    F = jnp.asarray(F, jnp.float32)
    if F.ndim != 2 or F.shape[0] != F.shape[1] or W.shape != F.shape:
        raise ValueError(f"eigen_alignment: need square W and F of the same shape, got W {W.shape}, F {F.shape}")
    s, U = jnp.linalg.eigh(0.5 * (F + F.T))  # ascending
    s, U = s[::-1], U[:, ::-1]
    WU = W @ U
    dots = jnp.sum(WU * U, axis=0)
    norms = jnp.linalg.norm(WU, axis=0) * jnp.linalg.norm(U, axis=0)
    return s, jnp.where(norms > 0, dots / jnp.maximum(norms, 1e-30), 0.0)


def clustering_metrics(labels_true, labels_pred) -> dict:
    """Agreement between a clustering and the true labels.

    acc: max over one-to-one maps m from clusters to classes of mean_i [m(pred_i) = true_i], the map found by the
         Hungarian algorithm on the contingency table (scipy.optimize.linear_sum_assignment).
    nmi: normalised mutual information, I(T; P) / mean(H(T), H(P)) (arithmetic mean, sklearn's default).
    ari: adjusted Rand index (chance-corrected pair agreement; 0 for random, 1 for identical partitions).
    Returns dict(nmi=, ari=, acc=) of Python floats.
    """
    from scipy.optimize import linear_sum_assignment
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    t = np.asarray(labels_true).ravel()
    p = np.asarray(labels_pred).ravel()
    if t.shape != p.shape or t.size == 0:
        raise ValueError(
            f"clustering_metrics: need two non-empty label arrays of equal length, got {t.shape} and {p.shape}"
        )
    t_vals, t_idx = np.unique(t, return_inverse=True)
    p_vals, p_idx = np.unique(p, return_inverse=True)
    counts = np.zeros((p_vals.size, t_vals.size), np.int64)
    np.add.at(counts, (p_idx, t_idx), 1)
    rows, cols = linear_sum_assignment(counts, maximize=True)
    return dict(
        nmi=float(normalized_mutual_info_score(t, p)),
        ari=float(adjusted_rand_score(t, p)),
        acc=float(counts[rows, cols].sum() / t.size),
    )


def kmeans_cluster_eval(features, labels, num_clusters: int, seed: int = 0) -> dict:
    """k-means (scikit-learn, k-means++ init, 10 restarts) on n(features), scored with `clustering_metrics`.

    Returns dict(nmi=, ari=, acc=) for the cluster assignments against `labels`.
    """
    from sklearn.cluster import KMeans

    x = np.asarray(features, np.float64)
    if x.ndim != 2 or x.shape[0] != np.shape(labels)[0]:
        raise ValueError(
            f"kmeans_cluster_eval: need features [N, D] and labels [N], got {x.shape} and {np.shape(labels)}"
        )
    if not 1 <= num_clusters <= x.shape[0]:
        raise ValueError(f"kmeans_cluster_eval: num_clusters must be in [1, {x.shape[0]}], got {num_clusters}")
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    pred = KMeans(n_clusters=num_clusters, n_init=10, random_state=seed).fit_predict(x)
    return clustering_metrics(labels, pred)
