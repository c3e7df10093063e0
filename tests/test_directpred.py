"""DirectPred / DirectCopy closed-form predictor math against NumPy eigendecompositions and known matrices."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ssljax.objectives import predictors as dp

EPS = 0.01
# sqrt is not Lipschitz at 0: float32 rounding puts F's zero eigenvalues at about +-1e-8 s_max, which p = sqrt(a)
# turns into up to ~1e-4. Comparisons that involve zero eigenvalues use this tolerance.
SQRT_ROUNDING = 5e-4


def orthogonal(d, seed):
    q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(d, d)))
    return q


def from_spectrum(s, seed=0):
    """Symmetric float32 matrix U diag(s) U^T with a random orthogonal U."""
    u = orthogonal(len(s), seed)
    return jnp.asarray((u * np.asarray(s, np.float64)) @ u.T, jnp.float32)


def np_predictor(F, eps=EPS, transform='sqrt'):
    """The paper's recipe in float64 NumPy: clip, normalise by the top eigenvalue, transform, floor, recompose."""
    s, u = np.linalg.eigh(np.asarray(F, np.float64))
    a = np.maximum(s, 0) / s.max()
    if transform == 'sqrt':
        p = np.maximum(np.sqrt(a) + eps, 1e-4)
    elif transform == 'linear':
        p = np.maximum(a + eps, 1e-4)
    else:
        p = np.sqrt(np.maximum(a + eps, 1e-4))
    return (u * p) @ u.T


def low_rank(d=32, rank=3, seed=0):
    """A float32 correlation matrix of a batch smaller than d: rank-deficient, with rounding-level negatives."""
    f = np.random.default_rng(seed).normal(size=(rank, d)).astype(np.float32)
    f = jnp.asarray(f)
    return dp.batch_correlation(f[:1], f[1:])


def spectral_err(a, b):
    return np.linalg.norm(np.asarray(a, np.float64) - np.asarray(b, np.float64), 2)


def assert_symmetric(W):
    W = np.asarray(W)
    assert np.all(np.isfinite(W))
    np.testing.assert_array_equal(W, W.T)


# ---------------------------------------------------------------------------------------------- statistics

def test_update_correlation_first_batch_then_ema():
    rng = np.random.default_rng(0)
    d, b = 6, 5
    batches = [(rng.normal(size=(b, d)), rng.normal(size=(b, d))) for _ in range(3)]
    F = jnp.zeros((d, d), jnp.float32)
    mu = jnp.zeros((d,), jnp.float32)
    F_np, mu_np = None, None
    step = jax.jit(lambda F, mu, fa, fb, init: (dp.update_correlation(F, fa, fb, 0.3, init),
                                                dp.update_mean(mu, fa, fb, 0.3, init)))
    for t, (fa, fb) in enumerate(batches):
        f = np.concatenate([fa, fb])
        g = f.T @ f / (2 * b)  # mean over both views of f f^T
        F_np = g if t == 0 else 0.3 * F_np + 0.7 * g
        mu_np = f.mean(0) if t == 0 else 0.3 * mu_np + 0.7 * f.mean(0)
        F, mu = step(F, mu, jnp.asarray(fa, jnp.float32), jnp.asarray(fb, jnp.float32), jnp.asarray(t > 0))
        np.testing.assert_allclose(F, F_np, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(mu, mu_np, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(dp.centered_correlation(F, mu), F_np - np.outer(mu_np, mu_np), rtol=1e-5, atol=1e-6)
    # The first batch's value, not rho * 0 + (1 - rho) G, whatever F held before.
    fa, fb = batches[0]
    F0 = dp.update_correlation(jnp.full((d, d), 7.0), jnp.asarray(fa), jnp.asarray(fb), 0.3, False)
    f = np.concatenate([fa, fb])
    np.testing.assert_allclose(F0, f.T @ f / (2 * b), rtol=1e-5, atol=1e-6)


def test_update_correlation_has_no_gradient_and_checks_shapes():
    f = jnp.ones((3, 4))
    g = jax.grad(lambda x: dp.update_correlation(jnp.zeros((4, 4)), x, x, 0.3, True).sum())(f)
    assert float(jnp.abs(g).max()) == 0.0
    with pytest.raises(ValueError, match='do not match'):
        dp.update_correlation(jnp.zeros((5, 5)), f, f, 0.3, True)
    with pytest.raises(ValueError, match='square'):
        dp.update_correlation(jnp.zeros((4, 5)), f, f, 0.3, True)


def test_top_eigenvalue():
    s = np.linspace(0.05, 2.0, 40)
    np.testing.assert_allclose(dp.top_eigenvalue(from_spectrum(s)), 2.0, rtol=1e-3)
    s = np.array([3.0, 3.0, 3.0, 1.0, 0.5, 0.0])  # repeated top eigenvalue: no gap needed
    np.testing.assert_allclose(dp.top_eigenvalue(from_spectrum(s)), 3.0, rtol=1e-5)
    F = low_rank()
    np.testing.assert_allclose(dp.top_eigenvalue(F), np.linalg.eigvalsh(np.asarray(F, np.float64)).max(), rtol=1e-5)
    assert float(dp.top_eigenvalue(jnp.zeros((5, 5)))) == 0.0


# ---------------------------------------------------------------------------------------------- DirectPred, eigh

@pytest.mark.parametrize('transform', dp.TRANSFORMS)
def test_eigh_predictor_matches_numpy(transform):
    F = from_spectrum(np.random.default_rng(1).uniform(0.0, 2.0, size=24), seed=1)
    W = jax.jit(lambda F: dp.predictor_from_correlation(F, EPS, 'eigh', transform))(F)
    assert_symmetric(W)
    np.testing.assert_allclose(W, np_predictor(F, EPS, transform), atol=2e-5)


def test_eigh_predictor_spectrum_in_eps_one_plus_eps():
    for F in (from_spectrum(np.random.default_rng(2).exponential(size=32), seed=2), low_rank()):
        W = dp.predictor_from_correlation(F, EPS)
        s = np.linalg.eigvalsh(np.asarray(W, np.float64))
        assert s.min() >= EPS - 1e-6 and s.max() <= 1 + EPS + 1e-6
        np.testing.assert_allclose(s.max(), 1 + EPS, atol=1e-5)  # the top eigenvalue maps to 1 + eps
    # W_p shares F's eigenvectors and p_j = sqrt(s_j / s_max) + eps: the square-root relation
    s_F = np.array([4.0, 1.0, 0.25, 0.0])
    u = orthogonal(4, 3)
    W = np.asarray(dp.predictor_from_correlation(jnp.asarray((u * s_F) @ u.T, jnp.float32), EPS), np.float64)
    np.testing.assert_allclose(np.sum(u * (W @ u), 0), [1 + EPS, 0.5 + EPS, 0.25 + EPS, EPS], atol=1e-5)


def test_diagonal_method():
    F = from_spectrum(np.random.default_rng(4).uniform(0.1, 1.0, 8), seed=4)
    W = dp.predictor_from_correlation(F, EPS, 'diagonal')
    diag = np.diag(np.asarray(F, np.float64))
    np.testing.assert_allclose(W, np.diag(np.sqrt(diag / diag.max()) + EPS), atol=1e-6)


def test_degenerate_spectra_eigh_known_outputs():
    d = 6
    eye = np.eye(d)
    # F = 0: the transform of a = 0, i.e. eps I (documented).
    np.testing.assert_allclose(dp.predictor_from_correlation(jnp.zeros((d, d)), EPS), EPS * eye, atol=1e-7)
    np.testing.assert_allclose(dp.predictor_from_correlation(jnp.zeros((d, d)), 0.0), 1e-4 * eye, atol=1e-9)
    np.testing.assert_allclose(dp.predictor_from_correlation(jnp.zeros((d, d)), EPS, transform='sqrt_eps_inside'),
                               np.sqrt(EPS) * eye, atol=1e-7)
    # F = c I (one eigenvalue repeated d times): (1 + eps) I.
    np.testing.assert_allclose(dp.predictor_from_correlation(2.5 * jnp.eye(d), EPS), (1 + EPS) * eye, atol=1e-6)
    # Rank 1: F = c v v^T -> W = eps I + v v^T (unit v).
    v = np.random.default_rng(5).normal(size=d)
    v /= np.linalg.norm(v)
    W = dp.predictor_from_correlation(jnp.asarray(3.0 * np.outer(v, v), jnp.float32), EPS)
    assert_symmetric(W)
    np.testing.assert_allclose(W, EPS * eye + np.outer(v, v), atol=SQRT_ROUNDING)
    # Repeated eigenvalues inside the spectrum.
    s = [2.0, 2.0, 2.0, 0.5, 0.5, 0.0]
    F = from_spectrum(s, seed=6)
    W = dp.predictor_from_correlation(F, EPS)
    assert_symmetric(W)
    np.testing.assert_allclose(W, np_predictor(F), atol=SQRT_ROUNDING)
    np.testing.assert_allclose(np.sort(np.linalg.eigvalsh(np.asarray(W, np.float64))),
                               np.sort([1 + EPS] * 3 + [0.5 + EPS] * 2 + [EPS]), atol=SQRT_ROUNDING)


def test_negative_eigenvalues_are_clipped():
    s = np.array([1.0, 0.3, 0.0, -1e-7, -1e-3, -0.2])  # rounding-sized and genuinely negative
    F = from_spectrum(s, seed=7)
    W = dp.predictor_from_correlation(F, EPS)
    assert_symmetric(W)
    u = orthogonal(6, 7)
    expected = (u * (np.sqrt(np.maximum(s, 0)) + EPS)) @ u.T
    np.testing.assert_allclose(W, expected, atol=SQRT_ROUNDING)
    assert np.linalg.eigvalsh(np.asarray(W, np.float64)).min() > EPS - 1e-5
    # A rank-deficient float32 correlation whose float32 eigh reports negative eigenvalues.
    F = low_rank(d=48, rank=4)
    assert float(jnp.linalg.eigvalsh(F).min()) < 0.0
    W = dp.predictor_from_correlation(F, EPS)
    assert_symmetric(W)
    assert np.linalg.eigvalsh(np.asarray(W, np.float64)).min() > EPS - 1e-5


# ---------------------------------------------------------------------------------------------- Newton-Schulz

def test_sqrtm_newton_schulz():
    s = np.linspace(0.05, 1.0, 16)
    A = from_spectrum(s, seed=8)
    Y, Z = dp.sqrtm_newton_schulz(A, 20)
    u = orthogonal(16, 8)
    np.testing.assert_allclose(Y, (u * np.sqrt(s)) @ u.T, atol=1e-5)
    np.testing.assert_allclose(Z, (u / np.sqrt(s)) @ u.T, atol=1e-4)


@pytest.mark.parametrize('transform', dp.TRANSFORMS)
def test_newton_schulz_agrees_with_eigh_well_conditioned(transform):
    F = from_spectrum(np.linspace(0.05, 3.0, 32), seed=9)
    ns = jax.jit(lambda F: dp.predictor_from_correlation(F, EPS, 'newton_schulz', transform))(F)
    assert_symmetric(ns)
    assert spectral_err(ns, np_predictor(F, EPS, transform)) < 2e-4
    W, ok = dp.newton_schulz_predictor(F, EPS, transform)
    assert bool(ok)


@pytest.mark.parametrize('d,rank', [(32, 3), (64, 1), (64, 20)])
def test_newton_schulz_agrees_with_eigh_low_rank(d, rank):
    F = low_rank(d, rank, seed=d + rank)
    W, ok = dp.newton_schulz_predictor(F, EPS)
    assert bool(ok)
    assert_symmetric(W)
    # The shift moves the null space by at most sqrt(1e-6) = 1e-3 (documented tolerance).
    assert spectral_err(W, np_predictor(F)) < 2e-3
    s = np.linalg.eigvalsh(np.asarray(W, np.float64))
    assert s.min() >= EPS - 1e-5 and s.max() <= 1 + EPS + 2e-3


def test_newton_schulz_degenerate_spectra():
    d = 8
    np.testing.assert_allclose(dp.predictor_from_correlation(jnp.zeros((d, d)), EPS, 'newton_schulz'),
                               EPS * np.eye(d), atol=1e-7)
    W = dp.predictor_from_correlation(2.0 * jnp.eye(d), EPS, 'newton_schulz')
    np.testing.assert_allclose(W, (1 + EPS) * np.eye(d), atol=1e-4)
    v = np.random.default_rng(10).normal(size=d)
    v /= np.linalg.norm(v)
    W = dp.predictor_from_correlation(jnp.asarray(np.outer(v, v), jnp.float32), EPS, 'newton_schulz')
    assert_symmetric(W)
    np.testing.assert_allclose(W, EPS * np.eye(d) + np.outer(v, v), atol=2e-3)
    F = from_spectrum([2.0, 2.0, 2.0, 0.5, 0.5, 0.0, 0.0, -1e-7], seed=11)
    W = dp.predictor_from_correlation(F, EPS, 'newton_schulz')
    assert_symmetric(W)
    assert spectral_err(W, np_predictor(F)) < 2e-3


def test_newton_schulz_falls_back_to_eigh_on_negative_eigenvalues():
    # Eigenvalues well below -shift * s_max make the iteration diverge: the check fails and eigh is used.
    F = from_spectrum(np.concatenate([np.exp(-np.arange(28) / 4.0), [-1e-3, -1e-2, -1e-4, -0.05]]), seed=12)
    _, ok = dp.newton_schulz_predictor(F, EPS)
    assert not bool(ok)
    W = jax.jit(lambda F: dp.predictor_from_correlation(F, EPS, 'newton_schulz'))(F)
    assert_symmetric(W)
    np.testing.assert_allclose(W, np_predictor(F), atol=2e-5)


# ---------------------------------------------------------------------------------------------- DirectCopy

def test_directcopy_formula():
    F = from_spectrum(np.random.default_rng(13).uniform(0, 3, 10), seed=13)
    Fn = np.asarray(F, np.float64)
    smax = np.linalg.eigvalsh(Fn).max()
    eye = np.eye(10)
    # The default is the paper's Frobenius normalisation.
    np.testing.assert_allclose(dp.directcopy_predictor(F, EPS), Fn / np.linalg.norm(Fn) + EPS * eye, atol=1e-6)
    np.testing.assert_allclose(dp.directcopy_predictor(F, EPS, 'frobenius'), Fn / np.linalg.norm(Fn) + EPS * eye,
                               atol=1e-6)
    np.testing.assert_allclose(dp.directcopy_predictor(F, EPS, 'spectral'), Fn / smax + EPS * eye, atol=1e-5)
    np.testing.assert_allclose(dp.directcopy_predictor(F, EPS, 'none'), Fn + EPS * eye, atol=1e-6)
    for norm, top in (('frobenius', smax / np.linalg.norm(Fn)), ('spectral', 1.0)):
        W = jax.jit(lambda F: dp.directcopy_predictor(F, EPS, norm))(F)
        assert_symmetric(W)
        s = np.linalg.eigvalsh(np.asarray(W, np.float64))
        assert s.min() >= EPS - 1e-6
        np.testing.assert_allclose(s.max(), top + EPS, rtol=1e-5)
    # Spectral DirectCopy is DirectPred's 'linear' transform without the decomposition.
    np.testing.assert_allclose(dp.directcopy_predictor(F, EPS, 'spectral'),
                               dp.predictor_from_correlation(F, EPS, transform='linear'), atol=1e-5)
    for norm in dp.NORMALIZATIONS:
        np.testing.assert_allclose(dp.directcopy_predictor(jnp.zeros((4, 4)), EPS, norm), EPS * np.eye(4))


def test_bad_options_raise():
    F = jnp.eye(3)
    with pytest.raises(ValueError, match='method'):
        dp.predictor_from_correlation(F, method='svd')
    with pytest.raises(ValueError, match='transform'):
        dp.predictor_from_correlation(F, transform='cube')
    with pytest.raises(ValueError, match='normalisation'):
        dp.directcopy_predictor(F, normalize='max')
    with pytest.raises(ValueError, match='square'):
        dp.predictor_from_correlation(jnp.ones((3, 4)))
