"""Tests for ssljax.evaluation: kNN, linear probes, diagnostics, feature extraction."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ssljax.evaluation import (
    alignment,
    clustering_metrics,
    eigen_alignment,
    extract_features,
    feature_std,
    kmeans_cluster_eval,
    knn_predict,
    knn_top1,
    online_probe_init,
    online_probe_loss,
    rankme,
    train_linear_probe,
    uniformity,
)


def _unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


# ----------------------------------------------------------------------------------------------------------- kNN

def knn_numpy(bank, bank_labels, queries, num_classes, k, temperature):
    """Direct weighted kNN: top-k by cosine similarity, votes exp(s / T)."""
    sims = _unit(queries.astype(np.float64)) @ _unit(bank.astype(np.float64)).T
    k = min(k, bank.shape[0])
    preds = []
    for row in sims:
        top = np.argsort(-row)[:k]
        votes = np.zeros(num_classes)
        for i in top:
            votes[bank_labels[i]] += np.exp(row[i] / temperature)
        preds.append(np.argmax(votes))
    return np.array(preds)


def _knn_data(seed, n_bank=120, n_query=37, dim=16, num_classes=5):
    rng = np.random.default_rng(seed)
    bank = rng.normal(size=(n_bank, dim)).astype(np.float32)
    labels = rng.integers(0, num_classes, n_bank)
    queries = rng.normal(size=(n_query, dim)).astype(np.float32)
    return bank, labels, queries


def test_knn_matches_numpy_with_distinct_similarities():
    bank, labels, queries = _knn_data(0)
    sorted_sims = -np.sort(-(_unit(queries) @ _unit(bank).T), axis=1)
    for k, temperature in [(1, 0.1), (10, 0.1), (25, 0.5)]:
        # The k-th and (k+1)-th similarities are distinct for every query, so the top-k set is unambiguous.
        assert np.min(sorted_sims[:, k - 1] - sorted_sims[:, k]) > 1e-5
        got = np.asarray(knn_predict(bank, labels, queries, 5, k=k, temperature=temperature))
        np.testing.assert_array_equal(got, knn_numpy(bank, labels, queries, 5, k, temperature))
        assert got.dtype == np.int32


def test_knn_k_larger_than_bank_and_chunking():
    bank, labels, queries = _knn_data(1, n_bank=50, n_query=37)
    want = knn_numpy(bank, labels, queries, 5, 50, 0.1)
    # k = 500 is clipped to the 50 bank entries; chunk = 8 needs a padded last chunk (37 = 4 * 8 + 5).
    for chunk in (8, 37, 1024):
        got = np.asarray(knn_predict(bank, labels, queries, 5, k=500, temperature=0.1, chunk=chunk))
        assert got.shape == (37,)
        np.testing.assert_array_equal(got, want)


def test_knn_votes_are_weighted_by_similarity():
    query = np.array([[1.0, 0.0]], np.float32)
    # Two class-1 neighbours almost identical to the query, three class-0 neighbours far less similar.
    bank = np.array([[1.0, 0.01], [1.0, -0.01], [0.5, 1.0], [0.5, -1.0], [0.6, 1.0]], np.float32)
    labels = np.array([1, 1, 0, 0, 0])
    assert int(knn_predict(bank, labels, query, 2, k=5, temperature=0.1)[0]) == 1  # weighted vote
    assert int(knn_predict(bank, labels, query, 2, k=5, temperature=1e3)[0]) == 0  # ~ plain majority
    assert knn_numpy(bank, labels, query, 2, 5, 0.1)[0] == 1


def test_knn_small_temperature_does_not_overflow():
    bank, labels, queries = _knn_data(2)
    got = np.asarray(knn_predict(bank, labels, queries, 5, k=10, temperature=0.005))
    # exp(1 / 0.005) overflows float64 too, so the reference is the nearest neighbour's label (the weight ratio
    # between the first and second neighbour is astronomically large).
    sims = _unit(queries) @ _unit(bank).T
    np.testing.assert_array_equal(got, labels[np.argmax(sims, axis=1)])


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="checks the XLA CPU lowering")
def test_knn_uses_top_k_kernel_not_full_sort():
    # A full sort over the bank made the monitor 15x slower on CPU (50k bank, 10k queries: 175 s instead of 11 s).
    from ssljax.evaluation.knn import _knn_predict_jit
    bank, labels, queries = _knn_data(4, n_bank=300, n_query=16)
    hlo = _knn_predict_jit.lower(bank, labels.astype(np.int32), queries, num_classes=5, k=10, chunk=8,
                                 temperature=0.1).compile().as_text()
    assert " sort(" not in hlo


def test_knn_top1_and_errors():
    bank, labels, queries = _knn_data(3)
    test_labels = np.random.default_rng(0).integers(0, 5, queries.shape[0])
    want = np.mean(knn_numpy(bank, labels, queries, 5, 20, 0.1) == test_labels)
    assert knn_top1(bank, labels, queries, test_labels, 5, k=20) == pytest.approx(want)
    with pytest.raises(ValueError, match="feature dims"):
        knn_predict(bank, labels, queries[:, :3], 5)


# -------------------------------------------------------------------------------------------------- linear probe

def _blobs(seed, n_per_class, num_classes=4, dim=16, sep=6.0):
    rng = np.random.default_rng(seed)
    means = rng.normal(size=(num_classes, dim))
    means = sep * means / np.linalg.norm(means, axis=1, keepdims=True)
    y = np.repeat(np.arange(num_classes), n_per_class)
    x = means[y] + rng.normal(size=(y.size, dim))
    perm = rng.permutation(y.size)
    return x[perm].astype(np.float32), y[perm]


def test_linear_probe_separable_blobs():
    x, y = _blobs(0, 150)
    # Offset and scale the features: standardisation must undo this.
    x = 50.0 + 20.0 * x
    x_tr, y_tr, x_te, y_te = x[:400], y[:400], x[400:], y[400:]
    res = train_linear_probe(x_tr, y_tr, x_te, y_te, 4, epochs=20, batch_size=64, lr=0.5)
    assert res["top1"] >= 0.98 and res["train_top1"] >= 0.98
    assert res["loss"] < 0.2


def test_linear_probe_random_labels_is_chance_and_deterministic():
    rng = np.random.default_rng(1)
    x_tr = rng.normal(size=(400, 32)).astype(np.float32)
    x_te = rng.normal(size=(800, 32)).astype(np.float32)
    y_tr = rng.integers(0, 4, 400)
    y_te = rng.integers(0, 4, 800)
    kwargs = dict(epochs=10, batch_size=64, lr=0.2, normalize="bn_no_affine")
    a = train_linear_probe(x_tr, y_tr, x_te, y_te, 4, seed=3, **kwargs)
    b = train_linear_probe(x_tr, y_tr, x_te, y_te, 4, seed=3, **kwargs)
    c = train_linear_probe(x_tr, y_tr, x_te, y_te, 4, seed=4, **kwargs)
    assert abs(a["top1"] - 0.25) < 0.07  # 4.5 standard errors at 800 test examples
    assert a == b
    assert a["loss"] != c["loss"]


def test_linear_probe_bad_input():
    x = np.zeros((8, 4), np.float32)
    y = np.zeros(8, np.int64)
    with pytest.raises(ValueError, match="normalize"):
        train_linear_probe(x, y, x, y, 2, normalize="l2")
    with pytest.raises(ValueError, match="train_labels"):
        train_linear_probe(x, y + 5, x, y, 2)


# --------------------------------------------------------------------------------------------------- online probe

def test_online_probe_loss_matches_numpy_and_masks_unlabeled():
    rng = np.random.default_rng(0)
    params = online_probe_init(jax.random.key(0), 6, 3)
    assert params["kernel"].shape == (6, 3) and params["bias"].shape == (3,)
    params = {"kernel": jnp.asarray(rng.normal(size=(6, 3)), jnp.float32),
              "bias": jnp.asarray(rng.normal(size=3), jnp.float32)}
    feats = rng.normal(size=(10, 6)).astype(np.float32)
    labels = np.array([0, 1, 2, -1, 1, -1, 0, 2, 2, 1])

    logits = feats.astype(np.float64) @ np.asarray(params["kernel"]) + np.asarray(params["bias"])
    logp = logits - np.log(np.exp(logits).sum(1, keepdims=True))
    lab = labels >= 0
    want_loss = -np.mean(logp[lab, labels[lab]])
    want_acc = np.mean(np.argmax(logits[lab], 1) == labels[lab])
    loss, acc = online_probe_loss(params, feats, labels)
    np.testing.assert_allclose(loss, want_loss, rtol=1e-5)
    np.testing.assert_allclose(acc, want_acc, rtol=1e-6)

    # Unlabeled rows do not matter, whatever their features.
    feats2 = feats.copy()
    feats2[~lab] = 100.0
    np.testing.assert_allclose(online_probe_loss(params, feats2, labels)[0], loss, rtol=1e-6)

    # No gradient reaches the features; the bias gradient is mean(softmax - onehot) over labeled rows.
    g_feat = jax.grad(lambda f: online_probe_loss(params, f, labels)[0])(jnp.asarray(feats))
    assert np.all(np.asarray(g_feat) == 0.0)
    g_params = jax.grad(lambda p: online_probe_loss(p, feats, labels)[0])(params)
    probs = np.exp(logp[lab])
    want_bias_grad = np.mean(probs - np.eye(3)[labels[lab]], axis=0)
    np.testing.assert_allclose(g_params["bias"], want_bias_grad, atol=1e-6)

    # All unlabeled: zero loss and accuracy, no NaN.
    loss0, acc0 = online_probe_loss(params, feats, -np.ones(10, np.int32))
    assert float(loss0) == 0.0 and float(acc0) == 0.0


# ---------------------------------------------------------------------------------------------------- diagnostics

def test_rankme():
    rng = np.random.default_rng(0)
    u, _ = np.linalg.qr(rng.normal(size=(64, 64)))
    v, _ = np.linalg.qr(rng.normal(size=(32, 32)))
    for r in (1, 5, 20):
        z = u[:, :r] @ np.diag(np.full(r, 3.0)) @ v[:, :r].T  # r equal singular values
        np.testing.assert_allclose(rankme(z), r, rtol=2e-3)
    collapsed = np.tile(rng.normal(size=(1, 32)), (64, 1))
    np.testing.assert_allclose(rankme(collapsed), 1.0, rtol=2e-3)
    # General matrix against the formula.
    z = rng.normal(size=(64, 32)) * np.linspace(0.1, 3.0, 32)
    s = np.linalg.svd(z, compute_uv=False)
    p = s / s.sum() + 1e-7
    np.testing.assert_allclose(rankme(z), np.exp(-(p * np.log(p)).sum()), rtol=1e-4)
    np.testing.assert_allclose(jax.jit(rankme)(z), rankme(z), rtol=1e-5)


def test_alignment_uniformity_feature_std_against_numpy():
    rng = np.random.default_rng(1)
    za = rng.normal(size=(20, 8)).astype(np.float32)
    zb = za + 0.3 * rng.normal(size=(20, 8)).astype(np.float32)
    na, nb = _unit(za.astype(np.float64)), _unit(zb.astype(np.float64))
    dist = np.linalg.norm(na - nb, axis=1)
    np.testing.assert_allclose(alignment(za, zb), np.mean(dist ** 2), rtol=1e-5)
    np.testing.assert_allclose(alignment(za, zb, alpha=1), np.mean(dist), rtol=1e-5)
    assert float(alignment(za, za)) == pytest.approx(0.0, abs=1e-6)

    terms = [np.exp(-2.0 * np.sum((na[i] - na[j]) ** 2)) for i in range(20) for j in range(20) if i != j]
    np.testing.assert_allclose(uniformity(za), np.log(np.mean(terms)), rtol=1e-5)
    terms = [np.exp(-5.0 * np.sum((na[i] - na[j]) ** 2)) for i in range(20) for j in range(20) if i != j]
    np.testing.assert_allclose(uniformity(za, t=5), np.log(np.mean(terms)), rtol=1e-5)
    assert float(uniformity(np.ones((5, 3)))) == pytest.approx(0.0, abs=1e-6)  # all identical: log 1

    np.testing.assert_allclose(feature_std(za), np.mean(np.std(na, axis=0)), rtol=1e-5)
    for fn in (alignment, uniformity, feature_std):  # jit-able as pure array functions
        args = (za, zb) if fn is alignment else (za,)
        np.testing.assert_allclose(jax.jit(fn)(*args), fn(*args), rtol=1e-5)
    assert float(feature_std(np.tile(za[:1], (20, 1)))) == pytest.approx(0.0, abs=1e-6)
    spread = rng.normal(size=(4000, 64))
    np.testing.assert_allclose(feature_std(spread), 1 / np.sqrt(64), rtol=0.05)


def test_eigen_alignment():
    rng = np.random.default_rng(2)
    a = rng.normal(size=(8, 8))
    F = a @ a.T + 0.5 * np.eye(8)
    w, v = np.linalg.eigh(F)
    sqrtF = v @ np.diag(np.sqrt(w)) @ v.T
    for W in (F, sqrtF):
        eig, cos = eigen_alignment(W, F)
        np.testing.assert_allclose(eig, w[::-1], rtol=1e-4)
        np.testing.assert_allclose(cos, 1.0, atol=1e-4)
    rot, _ = np.linalg.qr(rng.normal(size=(8, 8)))
    _, cos = eigen_alignment(rot @ F, F)
    assert np.mean(np.asarray(cos)) < 0.8
    with pytest.raises(ValueError, match="square"):
        eigen_alignment(np.eye(3), np.eye(4))


def test_clustering_metrics():
    rng = np.random.default_rng(3)
    t = rng.integers(0, 6, 600)
    perm = rng.permutation(6) + 10  # renamed clusters
    m = clustering_metrics(t, perm[t])
    assert m == pytest.approx(dict(nmi=1.0, ari=1.0, acc=1.0))
    m = clustering_metrics(t, rng.integers(0, 6, 600))
    assert m["nmi"] < 0.05 and abs(m["ari"]) < 0.05 and m["acc"] < 1 / 6 + 0.08

    # Hungarian accuracy against brute force over all one-to-one maps.
    t = rng.integers(0, 4, 40)
    p = np.where(rng.random(40) < 0.6, (t + 1) % 4, rng.integers(0, 4, 40))
    best = max(np.mean(np.array(q)[p] == t) for q in itertools.permutations(range(4)))
    assert clustering_metrics(t, p)["acc"] == pytest.approx(best)
    assert clustering_metrics([0, 0, 1, 1], [0, 0, 0, 1])["acc"] == pytest.approx(0.75)


def test_kmeans_cluster_eval_on_directional_blobs():
    rng = np.random.default_rng(4)
    centres = np.eye(8)[:3] * 10.0
    y = np.repeat(np.arange(3), 30)
    x = centres[y] + rng.normal(size=(90, 8))
    m = kmeans_cluster_eval(x, y, 3, seed=0)
    assert m == pytest.approx(dict(nmi=1.0, ari=1.0, acc=1.0))


# --------------------------------------------------------------------------------------------- feature extraction

def test_extract_features_pads_and_strips():
    rng = np.random.default_rng(5)
    images = rng.integers(0, 256, size=(23, 4, 4, 3), dtype=np.uint8)
    proj = jnp.asarray(rng.normal(size=(48, 7)), jnp.float32)
    traces = []

    @jax.jit
    def encode(x):
        traces.append(x.shape)
        return x.reshape(x.shape[0], -1) @ proj

    def preprocess(batch):
        return jnp.asarray(batch, jnp.float32) / 255.0

    want = (images.reshape(23, -1) / 255.0) @ np.asarray(proj, np.float64)
    out = extract_features(encode, images, 8, preprocess)
    assert out.shape == (23, 7) and out.dtype == np.float32
    np.testing.assert_allclose(out, want, rtol=1e-4, atol=1e-4)
    assert traces == [(8, 4, 4, 3)]  # one compilation for 3 batches, the last one padded
    out = extract_features(encode, images[:5], 8, preprocess)  # fewer images than one batch
    np.testing.assert_allclose(out, want[:5], rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="no images"):
        extract_features(encode, images[:0], 8, preprocess)
