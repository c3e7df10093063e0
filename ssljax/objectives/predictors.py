"""DirectPred and DirectCopy: the linear predictor set in closed form from the projections' correlation matrix.

Pure functions of arrays, float32, jit-able; no module, config or state object. The objective
(``directpred.PredictorBYOL``) keeps F (and the running mean) in its state and calls these.

DirectPred (Tian, Chen & Ganguli, ICML 2021), with f the online projector outputs of both views (detached):

    F <- rho F + (1 - rho) E[f f^T]                         (F = the first batch's value on the first step)
    F = U diag(s) U^T                                        (symmetric eigendecomposition)
    p_j = max(sqrt(max(s_j, 0) / max_k s_k) + eps, 1e-4)     (transform 'sqrt', the paper's default)
    W_p = U diag(p) U^T

rho = 0.3, eps = 0.01 and an update every step in the paper. The eigenvalue transforms are the options of the
paper's released code (``balance_type='boost_scale'`` with its ``dyn_convert`` and ``dyn_eps_inside`` switches); with
a = max(s, 0) / s_max in [0, 1]:

    'sqrt'             p = max(sqrt(a) + eps, 1e-4)      (dyn_convert = 2: DirectPred as published)
    'linear'           p = max(a + eps, 1e-4)            (dyn_convert = 1: the "no square root" ablation)
    'sqrt_eps_inside'  p = sqrt(max(a + eps, 1e-4))      (dyn_eps_inside: eps added before the square root)

``method='diagonal'`` uses diag(F) alone (U = I), the code's ``corr_eigen_decomp=False`` ablation. Centring (the
code's ``dyn_zero_mean``) uses F - mu mu^T with mu the EMA of the batch means (:func:`centered_correlation`).

p is a function of F's eigenvalues, so W_p is a matrix function of F: for 'sqrt', W_p = sqrt(F+ / s_max) + eps I
(F+: F with negative eigenvalues clipped). ``method='newton_schulz'`` computes that square root with matrix products
only (:func:`newton_schulz_predictor`), which runs at matmul speed on accelerators where a symmetric
eigendecomposition does not.

DirectCopy (Wang, Chen, Du & Tian 2021) skips the decomposition: W_p = F / ||F||_F + eps I, F normalised by its
Frobenius norm as in the paper (:func:`directcopy_predictor`; spectral and no normalisation are options).

Every product here runs at ``Precision.HIGHEST``: on GPUs the default float32 matmul may use TF32 (10-bit mantissa),
whose 1e-3 relative rounding would turn F's zero eigenvalues into negative ones of that size.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

P_FLOOR = 1e-4  # lower bound of every eigenvalue p_j of W_p (as in the paper's code)
TRANSFORMS = ('sqrt', 'linear', 'sqrt_eps_inside')
METHODS = ('eigh', 'newton_schulz', 'diagonal')
NORMALIZATIONS = ('spectral', 'frobenius', 'none')
_TINY = float(jnp.finfo(jnp.float32).tiny)
_HI = jax.lax.Precision.HIGHEST


def _mm(a: jax.Array, b: jax.Array) -> jax.Array:
    return jnp.matmul(a, b, precision=_HI)


def _check_square(F: jax.Array, name: str = 'F') -> None:
    if F.ndim != 2 or F.shape[0] != F.shape[1]:
        raise ValueError(f'{name} must be a square matrix [d, d], got shape {F.shape}')


def _symmetrize(M: jax.Array) -> jax.Array:
    return 0.5 * (M + M.T)


# ------------------------------------------------------------------------------------------------------ statistics


def batch_correlation(f_a: jax.Array, f_b: jax.Array) -> jax.Array:
    """E[f f^T] over the rows of both views: (f_a^T f_a + f_b^T f_b) / (B_a + B_b), float32 [d, d], no gradient."""
    f = jax.lax.stop_gradient(jnp.concatenate([f_a, f_b], axis=0).astype(jnp.float32))
    return _mm(f.T, f) / f.shape[0]


def update_correlation(F: jax.Array, f_a: jax.Array, f_b: jax.Array, rho: float, initialized) -> jax.Array:
    """DirectPred's EMA correlation: F <- rho F + (1 - rho) E[f f^T]; returns E[f f^T] itself when not ``initialized``.

    E is the mean over the B_a + B_b rows of both views (:func:`batch_correlation`); f is detached. ``initialized``
    (a bool or a bool scalar array: whether F already holds a batch) makes F start at the first batch's value, as the
    paper's code does, rather than at zero. Returns float32 [d, d].
    """
    _check_square(F)
    G = batch_correlation(f_a, f_b)
    if G.shape != F.shape:
        raise ValueError(f'projections of width {G.shape[0]} do not match F of shape {F.shape}')
    return jnp.where(initialized, rho * F.astype(jnp.float32) + (1.0 - rho) * G, G)


def update_mean(mu: jax.Array, f_a: jax.Array, f_b: jax.Array, rho: float, initialized) -> jax.Array:
    """The same EMA for the mean: mu <- rho mu + (1 - rho) E[f] (E[f] itself on the first batch); float32 [d]."""
    f = jax.lax.stop_gradient(jnp.concatenate([f_a, f_b], axis=0).astype(jnp.float32))
    if f.shape[-1:] != mu.shape:
        raise ValueError(f'projections of width {f.shape[-1]} do not match the mean of shape {mu.shape}')
    m = f.mean(axis=0)
    return jnp.where(initialized, rho * mu.astype(jnp.float32) + (1.0 - rho) * m, m)


def centered_correlation(F: jax.Array, mu: jax.Array) -> jax.Array:
    """F - mu mu^T: the EMA covariance (the paper code's ``dyn_zero_mean``), with mu from :func:`update_mean`.

    With both EMAs started at the first batch, the weights sum to 1 and F - mu mu^T is positive semi-definite
    (it is the weighted within-batch covariances plus the spread of the batch means).
    """
    return F.astype(jnp.float32) - jnp.outer(mu, mu).astype(jnp.float32)


# ------------------------------------------------------------------------------------------------------ linear algebra


def top_eigenvalue(F: jax.Array, squarings: int = 8, iters: int = 2) -> jax.Array:
    """Largest eigenvalue of a symmetric positive semi-definite F by matrix products only (>= 0; 0 for F = 0).

    Power iteration accelerated by repeated squaring: B_0 = F / ||F||_F, B_{k+1} = B_k^2 / ||B_k^2||_F (``squarings``
    times, so B ~ F^m with m = 2^squarings), then v <- B v / ||B v|| ``iters`` times from a fixed pseudo-random start,
    and the Rayleigh quotient v^T F v / v^T v. That is a power iteration of degree m * iters (512 by default), so the
    estimate is a lower bound of s_max with relative error about (s_2 / s_1)^(2 m iters), and about 1 / (2 m iters)
    (1e-3) for spectra without a gap. Repeated top eigenvalues need no gap. Cost: ``squarings`` d x d products.
    """
    _check_square(F)
    F = F.astype(jnp.float32)
    B = F / jnp.maximum(jnp.linalg.norm(F), _TINY)
    for _ in range(squarings):
        B = _mm(B, B)
        B = B / jnp.maximum(jnp.linalg.norm(B), _TINY)
    # A fixed start that is not orthogonal to any particular eigenvector by construction (unlike ones or e_1).
    v = jax.random.normal(jax.random.PRNGKey(0), (F.shape[0],), jnp.float32)
    for _ in range(iters):
        v = _mm(B, v)
        v = v / jnp.maximum(jnp.linalg.norm(v), _TINY)
    return jnp.maximum(v @ _mm(F, v), 0.0)


def sqrtm_newton_schulz(A: jax.Array, iters: int) -> tuple[jax.Array, jax.Array]:
    """Coupled Newton-Schulz iteration for (A^1/2, A^-1/2) of a symmetric A with spectrum in (0, 1].

        Y_0 = A, Z_0 = I;   T_k = (3 I - Z_k Y_k) / 2,   Y_{k+1} = Y_k T_k,   Z_{k+1} = T_k Z_k.

    Three d x d products per iteration, a fixed count. On an eigenvalue a the iterates are y_k = sqrt(q_k a) with
    q_0 = a, q_{k+1} = q_k (3 - q_k)^2 / 4 -> 1: quadratic once q is near 1 but only x2.25 per step from a small a, so
    eigenvalues below about 2.25^-iters are not converged (they come out between 0 and sqrt(a) <= 1.5^-iters). It
    converges for a in (0, 3) and diverges for a < 0 (q -> -inf), which is why callers shift A first and check the
    result (:func:`newton_schulz_predictor`). Returns symmetrised (Y, Z), float32.
    """
    _check_square(A, 'A')
    eye = jnp.eye(A.shape[0], dtype=jnp.float32)

    def body(_, yz):
        y, z = yz
        t = 0.5 * (3.0 * eye - _mm(z, y))
        return _mm(y, t), _mm(t, z)

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


def _check_options(method: str, transform: str) -> None:
    if method not in METHODS:
        raise ValueError(f'unknown DirectPred method {method!r}; known: {", ".join(METHODS)}')
    if transform not in TRANSFORMS:
        raise ValueError(f'unknown eigenvalue transform {transform!r}; known: {", ".join(TRANSFORMS)}')


def _degenerate(d: int, eps: float, transform: str) -> jax.Array:
    """W_p for F = 0: the transform of a = 0 times I."""
    return eigenvalue_transform(jnp.zeros((), jnp.float32), eps, transform) * jnp.eye(d, dtype=jnp.float32)


def eigh_predictor(F: jax.Array, eps: float = 0.01, transform: str = 'sqrt', diagonal: bool = False) -> jax.Array:
    """The exact W_p = U diag(transform(max(s, 0) / s_max)) U^T from ``jnp.linalg.eigh`` of sym(F); float32 [d, d].

    ``diagonal``: s = diag(F), U = I instead (no decomposition). s_max <= 1.2e-38 (F = 0) gives transform(0) I.
    The result is symmetrised; its spectrum is the p_j. Note that sqrt is not Lipschitz at 0: float32 rounding leaves
    F's zero eigenvalues at about +-1e-8 s_max, and 'sqrt' maps those to p up to ~1e-4 above eps.
    """
    _check_square(F)
    _check_options('eigh', transform)
    F = _symmetrize(F.astype(jnp.float32))
    if diagonal:
        s = jnp.diagonal(F)
        s_max = jnp.max(s)
        W = jnp.diag(eigenvalue_transform(jnp.maximum(s, 0.0) / jnp.maximum(s_max, _TINY), eps, transform))
    else:
        s, U = jnp.linalg.eigh(F, symmetrize_input=False)
        s_max = s[-1]  # ascending order
        p = eigenvalue_transform(jnp.maximum(s, 0.0) / jnp.maximum(s_max, _TINY), eps, transform)
        W = _symmetrize(_mm(U * p, U.T))
    return jnp.where(s_max > _TINY, W, _degenerate(F.shape[0], eps, transform))


def newton_schulz_predictor(
    F: jax.Array,
    eps: float = 0.01,
    transform: str = 'sqrt',
    ns_iters: int = 20,
    ns_shift: float = 1e-6,
    ns_tol: float = 1e-2,
    power_squarings: int = 8,
) -> tuple[jax.Array, jax.Array]:
    """W_p by matrix products only, and whether to trust it: -> (W float32 [d, d], ok bool scalar).

    s_max = :func:`top_eigenvalue` (F, ``power_squarings``), A = F / s_max, delta = ``ns_shift``, and
        'sqrt'            W = NS-sqrt(A + delta I) + eps I
        'linear'          W = A + eps I                        (no square root needed)
        'sqrt_eps_inside' W = NS-sqrt(A + max(eps, delta) I)
    with NS-sqrt = :func:`sqrtm_newton_schulz` (``ns_iters`` iterations). The shift keeps the iteration off the
    eigenvalues that rounding makes slightly negative (about -1e-7 s_max in float32 for a rank-deficient F); it moves
    W by at most sqrt(delta) = 1e-3 on F's null space and by delta / (2 sqrt(a)) elsewhere. Eigenvalues a below
    about 2.25^-ns_iters are not converged and come out between eps and sqrt(a) + eps (<= 1.5^-ns_iters + eps).
    Other differences from :func:`eigh_predictor`: no 1e-4 floor (moot for eps >= 1e-4), s_max is a lower-bound
    estimate (W's top eigenvalue can exceed 1 + eps by about 1e-3), and float32 rounding over the iterations leaves
    errors of about 1e-3 (spectral norm) at d = 2048.

    ``ok`` is False when the result is not finite or ||Y^2 - A_shifted||_F > ``ns_tol`` ||A_shifted||_F: this
    happens when F has eigenvalues below -delta s_max (e.g. a centred F whose mean dwarfs its spread, computed with
    cancellation), on which the iteration diverges. :func:`predictor_from_correlation` then falls back to eigh.
    F = 0 gives (transform(0) I, True).
    """
    _check_square(F)
    _check_options('newton_schulz', transform)
    F = _symmetrize(F.astype(jnp.float32))
    d = F.shape[0]
    eye = jnp.eye(d, dtype=jnp.float32)
    s_max = top_eigenvalue(F, squarings=power_squarings)
    A = F / jnp.maximum(s_max, _TINY)
    if transform == 'linear':
        W, ok = A + eps * eye, jnp.all(jnp.isfinite(A))
    else:
        A_s = A + (ns_shift if transform == 'sqrt' else max(eps, ns_shift)) * eye
        Y, _ = sqrtm_newton_schulz(A_s, ns_iters)
        residual = jnp.linalg.norm(_mm(Y, Y) - A_s)
        ok = jnp.isfinite(residual) & (residual <= ns_tol * jnp.linalg.norm(A_s))
        W = Y + eps * eye if transform == 'sqrt' else Y
    degenerate = s_max <= _TINY
    return jnp.where(degenerate, _degenerate(d, eps, transform), W), degenerate | ok


def predictor_from_correlation(
    F: jax.Array,
    eps: float = 0.01,
    method: str = 'eigh',
    transform: str = 'sqrt',
    ns_iters: int = 20,
    ns_shift: float = 1e-6,
    ns_tol: float = 1e-2,
    power_squarings: int = 8,
) -> jax.Array:
    """DirectPred's W_p from a correlation matrix F (symmetric, positive semi-definite up to rounding); float32 [d, d].

    ``method``:
      'eigh'           exact (the paper): :func:`eigh_predictor`. Spectrum = {p_j}: in [max(eps, 1e-4), 1 + eps] for
                       'sqrt' and 'linear' (eps >= 0), in [sqrt(max(eps, 1e-4)), sqrt(1 + eps)] for 'sqrt_eps_inside'.
      'diagonal'       the transform of diag(F), U = I (the paper code's ablation without decomposition).
      'newton_schulz'  matrix products only (:func:`newton_schulz_predictor`; agrees with 'eigh' to about 1e-3 in
                       spectral norm); when its check fails, ``lax.cond`` computes the eigh result instead (only the
                       taken branch runs), so the output is always finite for finite F.

    Degenerate inputs: F = 0 gives transform(0) I (= max(eps, 1e-4) I for 'sqrt'); a rank-deficient F gives p = eps on
    its null space; rounding-negative eigenvalues are clipped to 0 (eigh) or absorbed by the shift (newton_schulz);
    repeated eigenvalues are fine (W_p does not depend on the basis chosen inside an eigenspace). The result is
    symmetric (exactly, up to the final symmetrisation).
    """
    _check_square(F)
    _check_options(method, transform)
    if method == 'eigh':
        return eigh_predictor(F, eps, transform)
    if method == 'diagonal':
        return eigh_predictor(F, eps, transform, diagonal=True)
    W, ok = newton_schulz_predictor(F, eps, transform, ns_iters, ns_shift, ns_tol, power_squarings)
    return jax.lax.cond(ok, lambda: W, lambda: eigh_predictor(F, eps, transform))


def directcopy_predictor(
    F: jax.Array, eps: float = 0.01, normalize: str = 'frobenius', power_squarings: int = 8
) -> jax.Array:
    """DirectCopy's W_p = F_hat + eps I, float32 [d, d], symmetric; no eigendecomposition.

    ``normalize`` picks F_hat:
      'frobenius' (default, the paper's DirectCopy)  F / ||F||_F = F / sqrt(sum_j s_j^2): one pass over F's entries;
                  F_hat's spectrum lies in [0, 1] with its top eigenvalue s_max / ||s||_2 <= 1 (1 only at rank 1).
      'spectral'  F / ||F||_2, ||F||_2 = s_max from :func:`top_eigenvalue` (matrix products only): spectrum in
                  [0, 1] with top eigenvalue 1, i.e. DirectPred's 'linear' transform without the decomposition.
      'none'      F itself (the ``predictor_reg=directcopy`` branch of the paper's public code, in the units of the
                  projections).
    F = 0 gives eps I.
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
