"""DirectPred and DirectCopy: the linear predictor set in closed form from the projections' correlation matrix.

Pure functions of arrays, float32, jit-able; no module, config or state object. The objective
(``noncontrastive.PredictorBYOL``) keeps ``F`` (and the running mean) in its state and calls these.

DirectPred (Tian, Chen & Ganguli, ICML 2021), with f the online projector outputs of both views (detached):

    F <- rho F + (1 - rho) E[f f^T]                         (F = the first batch's value on the first step)
    F = U diag(s) U^T                                        (symmetric eigendecomposition)
    p_j = max(sqrt(max(s_j, 0) / max_k s_k) + eps, 1e-4)     (transform 'sqrt', the paper's default)
    W_p = U diag(p) U^T

``rho`` = 0.3, ``eps`` = 0.01 and an update every step in the paper. The eigenvalue transforms follow the options of
the paper's released code (``balance_type='boost_scale'`` with its ``dyn_convert`` and ``dyn_eps_inside`` switches);
with a = max(s, 0) / s_max:

    'sqrt'             p = max(sqrt(a) + eps, 1e-4)      (dyn_convert = 2: the paper's DirectPred)
    'linear'           p = max(a + eps, 1e-4)            (dyn_convert = 1: the "no square root" ablation)
    'sqrt_eps_inside'  p = sqrt(max(a + eps, 1e-4))      (dyn_eps_inside: eps added before the square root)

and ``method='diagonal'`` uses only diag(F) (U = I), the code's ``corr_eigen_decomp=False`` ablation.
Centring (the code's ``dyn_zero_mean``) subtracts the outer product of the EMA mean: F - mu mu^T (see
:func:`centered_correlation`).

Because p is a function of F's eigenvalues, W_p is a matrix function of F: for 'sqrt', W_p = sqrt(F+ / s_max) + eps I
(F+ = F with negative eigenvalues clipped to 0). ``method='newton_schulz'`` computes that matrix square root with
matrix products only (a coupled Newton-Schulz iteration), which runs at matmul speed on accelerators where a
symmetric eigendecomposition does not; see :func:`predictor_from_correlation` for its exact contract.

DirectCopy (Wang, Chen, Du & Tian 2021) skips the decomposition: W_p = F / ||F||_2 + eps I (:func:`directcopy_predictor`).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

P_FLOOR = 1e-4          # lower bound of every eigenvalue p_j of W_p (as in the paper's code)
TRANSFORMS = ('sqrt', 'linear', 'sqrt_eps_inside')
METHODS = ('eigh', 'newton_schulz', 'diagonal')
NORMALIZATIONS = ('spectral', 'frobenius', 'none')
_TINY = float(jnp.finfo(jnp.float32).tiny)


def _check_square(F: jax.Array, name: str = 'F') -> None:
    if F.ndim != 2 or F.shape[0] != F.shape[1]:
        raise ValueError(f'{name} must be a square matrix [d, d], got shape {F.shape}')


def _symmetrize(M: jax.Array) -> jax.Array:
    return 0.5 * (M + M.T)


# ------------------------------------------------------------------------------------------------------ statistics

def batch_correlation(f_a: jax.Array, f_b: jax.Array) -> jax.Array:
    """E[f f^T] over the rows of both views: (f_a^T f_a + f_b^T f_b) / (B_a + B_b), float32 [d, d], no gradient."""
    f = jax.lax.stop_gradient(jnp.concatenate([f_a, f_b], axis=0).astype(jnp.float32))
    return (f.T @ f) / f.shape[0]


def update_correlation(F: jax.Array, f_a: jax.Array, f_b: jax.Array, rho: float, initialized) -> jax.Array:
    """DirectPred's EMA correlation: F <- rho F + (1 - rho) E[f f^T]; returns E[f f^T] itself when not ``initialized``.

    E is the mean over the B_a + B_b rows of both views (:func:`batch_correlation`); f is detached. ``initialized``
    (a bool or a bool scalar array: whether F already holds a batch) makes F start at the first batch's value, as the
    paper's code does, instead of at rho^t-weighted zeros.
    """
    _check_square(F)
    G = batch_correlation(f_a, f_b)
    if G.shape != F.shape:
        raise ValueError(f'projections of width {G.shape[0]} do not match F of shape {F.shape}')
    return jnp.where(initialized, rho * F.astype(jnp.float32) + (1.0 - rho) * G, G)


def update_mean(mu: jax.Array, f_a: jax.Array, f_b: jax.Array, rho: float, initialized) -> jax.Array:
    """The same EMA for the mean: mu <- rho mu + (1 - rho) E[f] (E[f] on the first batch); float32 [d]."""
    f = jax.lax.stop_gradient(jnp.concatenate([f_a, f_b], axis=0).astype(jnp.float32))
    m = f.mean(axis=0)
    return jnp.where(initialized, rho * mu.astype(jnp.float32) + (1.0 - rho) * m, m)


def centered_correlation(F: jax.Array, mu: jax.Array) -> jax.Array:
    """F - mu mu^T: the EMA covariance, the paper code's ``dyn_zero_mean`` option (mu from :func:`update_mean`)."""
    return F.astype(jnp.float32) - jnp.outer(mu, mu).astype(jnp.float32)


# ------------------------------------------------------------------------------------------------------ linear algebra

def top_eigenvalue(F: jax.Array, squarings: int = 8, iters: int = 2) -> jax.Array:
    """Largest eigenvalue of a symmetric positive semi-definite F by matrix products only (>= 0; 0 for F = 0).

    Power iteration accelerated by repeated squaring: B_0 = F / ||F||_F, B_{k+1} = B_k^2 / ||B_k^2||_F (``squarings``
    times, so B ~ F^m with m = 2^squarings), then v <- B v ``iters`` times from a fixed pseudo-random start, and the
    Rayleigh quotient v^T F v / v^T v. That is a power iteration of degree m * iters: the estimate is a lower bound of
    s_max whose relative error is about (1 - gap) ** (2 m iters) (with about 1 / (2 m iters) for spectra without a gap;
    defaults: m iters = 512, so <= 0.1%). Repeated top eigenvalues need no gap. Cost: ``squarings`` d x d products.
    """
    _check_square(F)
    F = F.astype(jnp.float32)
    d = F.shape[0]
    fro = jnp.linalg.norm(F)
    B = F / jnp.maximum(fro, _TINY)
    for _ in range(squarings):
        B = B @ B
        B = B / jnp.maximum(jnp.linalg.norm(B), _TINY)
    # A fixed start that is not orthogonal to any particular eigenvector by construction (unlike ones or e_1).
    v = jax.random.normal(jax.random.PRNGKey(0), (d,), jnp.float32)
    for _ in range(iters):
        v = B @ v
        v = v / jnp.maximum(jnp.linalg.norm(v), _TINY)
    return jnp.maximum(v @ (F @ v), 0.0)


def sqrtm_newton_schulz(A: jax.Array, iters: int) -> tuple[jax.Array, jax.Array]:
    """Coupled Newton-Schulz iteration for the square root of a symmetric A with spectrum in (0, 1]: (A^1/2, A^-1/2).

        Y_0 = A, Z_0 = I;   T_k = (3 I - Z_k Y_k) / 2,   Y_{k+1} = Y_k T_k,   Z_{k+1} = T_k Z_k.

    Three d x d products per iteration, a fixed count (no data-dependent control flow). On an eigenvalue a the
    iterates are y_k = sqrt(q_k a) with q_0 = a, q_{k+1} = q_k (3 - q_k)^2 / 4 -> 1: quadratic convergence once q is
    near 1, but only x2.25 per step from a small a, so eigenvalues below about 2.25^-iters are not converged (they come
    out smaller than sqrt(a), at most 1.5^-iters). It converges for a in (0, 3) and diverges for a < 0, so callers
    shift A to be safely positive definite (see :func:`predictor_from_correlation`).
    """
    _check_square(A, 'A')
    d = A.shape[0]
    eye = jnp.eye(d, dtype=jnp.float32)

    def body(_, yz):
        y, z = yz
        t = 0.5 * (3.0 * eye - z @ y)
        return y @ t, t @ z

    y, z = jax.lax.fori_loop(0, iters, body, (A.astype(jnp.float32), eye))
    return _symmetrize(y), _symmetrize(z)


# ------------------------------------------------------------------------------------------------------ predictors

def eigenvalue_transform(a: jax.Array, eps: float, transform: str = 'sqrt') -> jax.Array:
    """p = transform(a) for normalised eigenvalues a = max(s, 0) / s_max in [0, 1] (see the module docstring)."""
    if transform == 'sqrt':
        return jnp.maximum(jnp.sqrt(a) + eps, P_FLOOR)
    if transform == 'linear':
        return jnp.maximum(a + eps, P_FLOOR)
    if transform == 'sqrt_eps_inside':
        return jnp.sqrt(jnp.maximum(a + eps, P_FLOOR))
    raise ValueError(f'unknown eigenvalue transform {transform!r}; known: {", ".join(TRANSFORMS)}')


def predictor_from_correlation(F: jax.Array, eps: float = 0.01, method: str = 'eigh', transform: str = 'sqrt',
                               ns_iters: int = 24, ns_shift: float = 1e-6, power_squarings: int = 8) -> jax.Array:
    """DirectPred's W_p from a correlation matrix F (symmetric, positive semi-definite up to rounding); float32 [d, d].

    ``method='eigh'`` (exact, the paper): F = U diag(s) U^T (F symmetrised first), a_j = max(s_j, 0) / max_k s_k,
    p = :func:`eigenvalue_transform` (a, eps, transform), W_p = U diag(p) U^T (symmetrised). Its spectrum lies in
    [max(eps, 1e-4), 1 + eps] for 'sqrt' and 'linear' (eps >= 0), in [1e-2 * ..., sqrt(1 + eps)] for 'sqrt_eps_inside'.

    ``method='diagonal'``: the same transform applied to diag(F) with U = I (the paper code's no-eigendecomposition
    ablation); W_p is diagonal.

    ``method='newton_schulz'`` (matrix products only): s_max from :func:`top_eigenvalue` (``power_squarings``), then
    with A = F / s_max and delta = ``ns_shift``:
        'sqrt'            W_p = NS-sqrt(A + delta I) + eps I
        'linear'          W_p = A + eps I                        (no square root needed)
        'sqrt_eps_inside' W_p = NS-sqrt(A + max(eps, delta) I)
    NS-sqrt is :func:`sqrtm_newton_schulz` with ``ns_iters`` iterations. The shift delta (relative to s_max) keeps the
    iteration away from the eigenvalues that rounding makes slightly negative (about -1e-7 s_max in float32; the
    iteration diverges on those); it moves the result by at most sqrt(delta) = 1e-3 on F's null space, and by
    delta / (2 sqrt(a)) elsewhere. Eigenvalues a below about 2.25^-ns_iters are not converged and come out between
    eps and sqrt(a) + eps. Differences from 'eigh': no 1e-4 floor (eps >= 1e-4 makes it moot), negative eigenvalues
    of F beyond -delta s_max are not clipped (F from :func:`update_correlation` has none), and s_max is a lower-bound
    estimate, so the top of the spectrum can exceed 1 + eps by about half the estimate's relative error (~1e-3).

    Degenerate inputs, all methods: F = 0 (or s_max <= 1.2e-38) gives W_p = max(eps, 1e-4) I ('sqrt', 'linear') or
    sqrt(max(eps, 1e-4)) I ('sqrt_eps_inside'), i.e. the transform of a = 0; rank-deficient F gives p = eps on the null
    space; repeated eigenvalues are fine (W_p does not depend on the basis chosen inside an eigenspace).
    """
    _check_square(F)
    if method not in METHODS:
        raise ValueError(f'unknown DirectPred method {method!r}; known: {", ".join(METHODS)}')
    if transform not in TRANSFORMS:
        raise ValueError(f'unknown eigenvalue transform {transform!r}; known: {", ".join(TRANSFORMS)}')
    F = _symmetrize(F.astype(jnp.float32))
    d = F.shape[0]
    eye = jnp.eye(d, dtype=jnp.float32)
    degenerate = eigenvalue_transform(jnp.zeros((), jnp.float32), eps, transform) * eye

    if method == 'diagonal':
        s = jnp.diagonal(F)
        s_max = jnp.max(s)
        a = jnp.maximum(s, 0.0) / jnp.maximum(s_max, _TINY)
        return jnp.where(s_max > _TINY, jnp.diag(eigenvalue_transform(a, eps, transform)), degenerate)

    if method == 'eigh':
        s, U = jnp.linalg.eigh(F)
        s_max = s[-1]  # ascending order
        a = jnp.maximum(s, 0.0) / jnp.maximum(s_max, _TINY)
        W = _symmetrize((U * eigenvalue_transform(a, eps, transform)) @ U.T)
        return jnp.where(s_max > _TINY, W, degenerate)

    s_max = top_eigenvalue(F, squarings=power_squarings)
    A = F / jnp.maximum(s_max, _TINY)
    if transform == 'linear':
        W = A + eps * eye
    elif transform == 'sqrt':
        W = sqrtm_newton_schulz(A + ns_shift * eye, ns_iters)[0] + eps * eye
    else:  # sqrt_eps_inside
        W = sqrtm_newton_schulz(A + max(eps, ns_shift) * eye, ns_iters)[0]
    return jnp.where(s_max > _TINY, W, degenerate)


def directcopy_predictor(F: jax.Array, eps: float = 0.01, normalize: str = 'spectral',
                         power_squarings: int = 8) -> jax.Array:
    """DirectCopy's W_p = F_hat + eps I, float32 [d, d], symmetric; no eigendecomposition.

    ``normalize`` picks F_hat: 'spectral' (default) F / ||F||_2 with ||F||_2 = s_max from :func:`top_eigenvalue`
    (matrix products only), so F_hat's spectrum lies in [0, 1] like DirectPred's normalised a_j (our reading of the
    DirectCopy paper, which normalises F; the figure we could not verify against the paper's text); 'frobenius'
    F / ||F||_F; 'none' F itself (what the paper code's ``predictor_reg=directcopy`` branch does, with F in the units
    of the projections). F = 0 gives eps I.
    """
    _check_square(F)
    if normalize not in NORMALIZATIONS:
        raise ValueError(f'unknown DirectCopy normalisation {normalize!r}; known: {", ".join(NORMALIZATIONS)}')
    F = _symmetrize(F.astype(jnp.float32))
    eye = jnp.eye(F.shape[0], dtype=jnp.float32)
    if normalize == 'none':
        return F + eps * eye
    scale = top_eigenvalue(F, squarings=power_squarings) if normalize == 'spectral' else jnp.linalg.norm(F)
    return jnp.where(scale > _TINY, F / jnp.maximum(scale, _TINY), 0.0) + eps * eye
