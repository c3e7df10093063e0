"""SimCLR's NT-Xent and BYOL's loss against direct NumPy implementations, value and gradient."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ssljax.objectives import losses


def nt_xent_numpy(za, zb, tau):
    z = np.concatenate([za, zb]).astype(np.float64)
    z = z / np.linalg.norm(z, axis=1, keepdims=True)
    n = len(za)
    total = np.zeros(2 * n)
    for i in range(2 * n):
        j = (i + n) % (2 * n)
        s = z @ z[i] / tau
        denom = sum(np.exp(s[k]) for k in range(2 * n) if k != i)
        total[i] = -np.log(np.exp(s[j]) / denom)
    return total[:n].mean() + total[n:].mean()


def byol_numpy(pa, pb, za, zb):
    def nmse(p, z):
        p = p / np.linalg.norm(p, axis=1, keepdims=True)
        z = z / np.linalg.norm(z, axis=1, keepdims=True)
        return np.mean(np.sum((p - z) ** 2, axis=1))
    return nmse(pa, zb) + nmse(pb, za)


def numeric_grad(f, x, eps=1e-5):
    g = np.zeros_like(x)
    for idx in np.ndindex(x.shape):
        d = np.zeros_like(x)
        d[idx] = eps
        g[idx] = (f(x + d) - f(x - d)) / (2 * eps)
    return g


@pytest.mark.parametrize('tau', [0.1, 0.5])
def test_nt_xent_value_and_gradient(tau):
    rng = np.random.default_rng(0)
    za, zb = rng.normal(size=(6, 5)), rng.normal(size=(6, 5))
    value = losses.nt_xent(jnp.asarray(za, jnp.float32), jnp.asarray(zb, jnp.float32), tau)
    np.testing.assert_allclose(value, nt_xent_numpy(za, zb, tau), rtol=1e-5)
    grad = jax.grad(lambda a: losses.nt_xent(a, jnp.asarray(zb, jnp.float32), tau))(jnp.asarray(za, jnp.float32))
    expected = numeric_grad(lambda a: nt_xent_numpy(a, zb, tau), za)
    np.testing.assert_allclose(grad, expected, rtol=1e-3, atol=1e-5)
    # every negative carries gradient: perturbing any other row of z_b changes the loss of anchor 0's view
    assert np.all(np.abs(np.asarray(jax.grad(lambda b: losses.nt_xent(jnp.asarray(za, jnp.float32), b, tau))(
        jnp.asarray(zb, jnp.float32)))).sum(1) > 0)


def test_nt_xent_perfect_alignment_is_lower():
    rng = np.random.default_rng(1)
    z = jnp.asarray(rng.normal(size=(8, 16)), jnp.float32)
    noise = jnp.asarray(rng.normal(size=(8, 16)), jnp.float32)
    assert losses.nt_xent(z, z, 0.2) < losses.nt_xent(z, noise, 0.2)


def test_byol_loss_value_gradient_and_stop_gradient():
    rng = np.random.default_rng(2)
    pa, pb, za, zb = (rng.normal(size=(5, 4)) for _ in range(4))
    def f32(x):
        return jnp.asarray(x, jnp.float32)

    np.testing.assert_allclose(losses.byol_loss(f32(pa), f32(pb), f32(za), f32(zb)), byol_numpy(pa, pb, za, zb),
                               rtol=1e-5)
    grad = jax.grad(lambda p: losses.byol_loss(p, f32(pb), f32(za), f32(zb)))(f32(pa))
    np.testing.assert_allclose(grad, numeric_grad(lambda p: byol_numpy(p, pb, za, zb), pa), rtol=1e-3, atol=1e-5)
    target_grad = jax.grad(lambda z: losses.byol_loss(f32(pa), f32(pb), z, f32(zb)))(f32(za))
    np.testing.assert_array_equal(target_grad, 0.0)
    # identical directions give zero loss
    np.testing.assert_allclose(losses.byol_loss(f32(pa), f32(pb), f32(2 * pb), f32(3 * pa)), 0.0, atol=1e-6)
