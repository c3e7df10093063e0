"""Non-contrastive losses against direct NumPy (float64) implementations: values, and jax.grad against central
finite differences of the NumPy formula."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ssljax.objectives import losses

# ---------------------------------------------------------------------------------------------- NumPy references

def np_cos(a, b):
    return np.sum(a * b, -1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))


def np_simsiam(p_a, p_b, z_a, z_b):
    return -0.5 * (np_cos(p_a, z_b).mean() + np_cos(p_b, z_a).mean())


def np_barlow(z_a, z_b, lambd=0.0051, eps=1e-5):
    def bn(z):  # BatchNorm1d(affine=False), train mode: biased variance
        return (z - z.mean(0)) / np.sqrt(z.var(0) + eps)
    c = bn(z_a).T @ bn(z_b) / z_a.shape[0]
    d = c.shape[0]
    on = sum((1 - c[i, i]) ** 2 for i in range(d))
    off = sum(c[i, j] ** 2 for i in range(d) for j in range(d) if i != j)
    return on + lambd * off


def np_vicreg_terms(z_a, z_b, eps=1e-4):
    n, d = z_a.shape
    inv = np.mean((z_a - z_b) ** 2)
    var, cov = [], []
    for z in (z_a, z_b):
        zc = z - z.mean(0)
        std = np.sqrt(zc.var(0, ddof=1) + eps)
        var.append(np.mean(np.maximum(0.0, 1.0 - std)))
        c = np.cov(z, rowvar=False)  # unbiased
        cov.append((np.sum(c ** 2) - np.sum(np.diag(c) ** 2)) / d)
    return inv, 0.5 * (var[0] + var[1]), cov[0] + cov[1]


def np_vicreg(z_a, z_b, sim=25.0, std=25.0, cov=1.0):
    i, v, c = np_vicreg_terms(z_a, z_b)
    return sim * i + std * v + cov * c


def np_log_softmax(x):
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def np_dino(students, teachers, center, tau_s, tau_t):
    total, n = 0.0, 0
    for t, tl in enumerate(teachers):
        q = np.exp(np_log_softmax((tl - center) / tau_t))
        for v, sl in enumerate(students):
            if v == t:
                continue
            total += np.mean(-np.sum(q * np_log_softmax(sl / tau_s), -1))
            n += 1
    return total / n


def numeric_grad(f, x, h=1e-6):
    """Central differences of a float64 NumPy function f at x (any shape)."""
    x = np.array(x, np.float64)
    g = np.zeros_like(x)
    for idx in np.ndindex(x.shape):
        xp, xm = x.copy(), x.copy()
        xp[idx] += h
        xm[idx] -= h
        g[idx] = (f(xp) - f(xm)) / (2 * h)
    return g


def rand(seed, *shape):
    return np.random.default_rng(seed).normal(size=shape)


def close(a, b, rtol=1e-4, atol=1e-5):
    np.testing.assert_allclose(np.asarray(a, np.float64), np.asarray(b, np.float64), rtol=rtol, atol=atol)


# ---------------------------------------------------------------------------------------------- SimSiam

def test_simsiam_value_and_gradient():
    p_a, p_b, z_a, z_b = (rand(i, 6, 5) for i in range(4))
    f32 = [jnp.asarray(x, jnp.float32) for x in (p_a, p_b, z_a, z_b)]
    close(losses.simsiam_loss(*f32), np_simsiam(p_a, p_b, z_a, z_b))
    g = jax.grad(losses.simsiam_loss, argnums=(0, 1, 2, 3))(*f32)
    close(g[0], numeric_grad(lambda x: np_simsiam(x, p_b, z_a, z_b), p_a), rtol=1e-3, atol=1e-5)
    close(g[1], numeric_grad(lambda x: np_simsiam(p_a, x, z_a, z_b), p_b), rtol=1e-3, atol=1e-5)
    # stop-gradient on the projections: no gradient to z although the NumPy function depends on it
    assert np.abs(numeric_grad(lambda x: np_simsiam(p_a, p_b, x, z_b), z_a)).max() > 1e-3
    assert float(jnp.abs(g[2]).max()) == 0.0 and float(jnp.abs(g[3]).max()) == 0.0


def test_simsiam_known_values():
    z = jnp.asarray(rand(0, 4, 3), jnp.float32)
    close(losses.simsiam_loss(z, z, z, z), -1.0)          # aligned predictions
    close(losses.simsiam_loss(z, z, -z, -z), 1.0)         # opposite
    close(losses.simsiam_loss(2.0 * z, z, z, 3.0 * z), -1.0)  # scale invariant


# ---------------------------------------------------------------------------------------------- Barlow Twins

def test_off_diagonal():
    m = jnp.arange(16.0).reshape(4, 4)
    expected = [m[i, j] for i in range(4) for j in range(4) if i != j]
    close(losses.off_diagonal(m), expected)


def test_barlow_twins_value_and_gradient():
    z_a, z_b = rand(1, 8, 5), rand(2, 8, 5) + 0.5 * rand(1, 8, 5)
    for lambd in (0.0051, 0.5):
        close(losses.barlow_twins_loss(jnp.asarray(z_a, jnp.float32), jnp.asarray(z_b, jnp.float32), lambd),
              np_barlow(z_a, z_b, lambd), rtol=1e-4)
    g_a, g_b = jax.grad(losses.barlow_twins_loss, argnums=(0, 1))(jnp.asarray(z_a, jnp.float32),
                                                                  jnp.asarray(z_b, jnp.float32), 0.5)
    close(g_a, numeric_grad(lambda x: np_barlow(x, z_b, 0.5), z_a), rtol=2e-3, atol=2e-4)
    close(g_b, numeric_grad(lambda x: np_barlow(z_a, x, 0.5), z_b), rtol=2e-3, atol=2e-4)


def test_barlow_twins_identity_correlation_is_zero_loss():
    # Columns that are standardised and mutually orthogonal over the batch give C = I (up to eps): loss ~ 0.
    h = np.array([[1, 1, 1, 1], [1, -1, 1, -1], [1, 1, -1, -1], [1, -1, -1, 1]], np.float64)  # Hadamard
    z = np.concatenate([h[:, 1:], -h[:, 1:]], axis=0)  # 8 x 3, zero-mean, unit biased variance, orthogonal
    c = losses.cross_correlation(jnp.asarray(z, jnp.float32), jnp.asarray(z, jnp.float32))
    close(c, np.eye(3) / (1 + 1e-5), atol=1e-6)
    assert float(losses.barlow_twins_loss(jnp.asarray(z), jnp.asarray(z))) < 1e-8
    # Perfectly correlated dimensions: C is all ones, loss = lambda * D (D - 1) (diagonal term ~ 0).
    col = h[:, 1:2]
    z2 = np.concatenate([np.tile(col, (1, 3)), -np.tile(col, (1, 3))], axis=0)
    close(losses.barlow_twins_loss(jnp.asarray(z2), jnp.asarray(z2), lambd=0.1), 0.1 * 6, rtol=1e-4)


# ---------------------------------------------------------------------------------------------- VICReg

def test_vicreg_value_terms_and_gradient():
    z_a, z_b = 0.3 * rand(3, 8, 5), 0.3 * rand(4, 8, 5) + 0.2 * rand(3, 8, 5)  # small std: variance hinge active
    total, terms = losses.vicreg_loss(jnp.asarray(z_a, jnp.float32), jnp.asarray(z_b, jnp.float32))
    inv, var, cov = np_vicreg_terms(z_a, z_b)
    close(terms['invariance'], inv)
    close(terms['variance'], var)
    close(terms['covariance'], cov)
    close(total, 25 * inv + 25 * var + cov)
    assert var > 0.1  # the hinge is exercised

    def f(a, b):
        return losses.vicreg_loss(a, b)[0]
    g_a, g_b = jax.grad(f, argnums=(0, 1))(jnp.asarray(z_a, jnp.float32), jnp.asarray(z_b, jnp.float32))
    close(g_a, numeric_grad(lambda x: np_vicreg(x, z_b), z_a), rtol=2e-3, atol=2e-4)
    close(g_b, numeric_grad(lambda x: np_vicreg(z_a, x), z_b), rtol=2e-3, atol=2e-4)


def test_vicreg_coefficients_and_known_values():
    z = rand(5, 8, 4)
    total, terms = losses.vicreg_loss(jnp.asarray(z), jnp.asarray(z), sim_coeff=3.0, std_coeff=0.0, cov_coeff=0.0)
    assert float(terms['invariance']) == 0.0 and float(total) == 0.0
    # Large-variance, decorrelated embeddings: variance hinge inactive.
    h = np.array([[1, 1, 1, 1], [1, -1, 1, -1], [1, 1, -1, -1], [1, -1, -1, 1]], np.float64)
    z = 5.0 * np.concatenate([h[:, 1:], -h[:, 1:]], axis=0)
    _, terms = losses.vicreg_loss(jnp.asarray(z), jnp.asarray(z))
    assert float(terms['variance']) == 0.0 and float(terms['covariance']) < 1e-10


# ---------------------------------------------------------------------------------------------- DINO

@pytest.mark.parametrize('num_views', [2, 4])
def test_dino_value_and_gradient(num_views):
    k = 7
    students = [rand(10 + v, 5, k) for v in range(num_views)]
    teachers = [rand(20 + t, 5, k) for t in range(2)]
    center = 0.3 * rand(30, k)
    tau_s, tau_t = 0.1, 0.05
    s32 = [jnp.asarray(s, jnp.float32) for s in students]
    t32 = [jnp.asarray(t, jnp.float32) for t in teachers]
    close(losses.dino_loss(s32, t32, jnp.asarray(center, jnp.float32), tau_s, tau_t),
          np_dino(students, teachers, center, tau_s, tau_t), rtol=1e-4)

    def f(ss, tt):
        return losses.dino_loss(ss, tt, jnp.asarray(center, jnp.float32), tau_s, tau_t)
    g_s, g_t = jax.grad(f, argnums=(0, 1))(s32, t32)
    for v in range(num_views):
        def fv(x, v=v):
            ss = list(students)
            ss[v] = x
            return np_dino(ss, teachers, center, tau_s, tau_t)
        close(g_s[v], numeric_grad(fv, students[v]), rtol=2e-3, atol=1e-4)
    assert all(float(jnp.abs(g).max()) == 0.0 for g in g_t)  # teacher is a stop-gradient target


def test_dino_pairs_skip_same_view():
    # Two views with identical teacher and student distributions: each view's own pair would be excluded, so the
    # loss is the cross-entropy between view 0's target and view 1's student and vice versa.
    k = 4
    t0, t1 = np.log(np.array([[0.7, 0.1, 0.1, 0.1]])), np.log(np.array([[0.1, 0.1, 0.1, 0.7]]))
    loss = losses.dino_loss([jnp.asarray(t0), jnp.asarray(t1)], [jnp.asarray(t0), jnp.asarray(t1)],
                            jnp.zeros(k), 1.0, 1.0)
    ce = -np.sum(np.exp(t0) * t1)  # = -sum q0 log q1 = -sum q1 log q0 here by symmetry of the two vectors
    close(loss, ce, rtol=1e-5)
    with pytest.raises(ValueError, match='teacher views'):
        losses.dino_loss([jnp.asarray(t0)], [jnp.asarray(t0), jnp.asarray(t1)], jnp.zeros(k), 0.1, 0.04)
