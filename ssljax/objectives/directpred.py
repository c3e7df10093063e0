"""DirectPred (Tian et al. 2021) and its comparison: BYOL whose predictor is chosen by one switch.

The closed-form maths (W_p from the EMA correlation F: eigh, Newton-Schulz, DirectCopy) are pure functions in
predictors.py; this file is the objective that keeps F in its state and writes W_p into the predictor.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from ssljax.models.heads import MLP, LinearPredictor, torch_linear_init
from ssljax.objectives import losses, predictors
from ssljax.objectives.base import check_choice, register, require, setting
from ssljax.objectives.ema import EMATwoViewObjective, pair_cosine

PREDICTOR_KINDS = ('directpred', 'directcopy', 'linear', 'mlp', 'none')
PREDICTOR_WRITES = ('after_freq', 'reference')


@register
@dataclasses.dataclass(frozen=True)
class PredictorBYOL(EMATwoViewObjective):
    """BYOL with a choice of predictor: DirectPred (Tian et al. 2021), DirectCopy (Wang et al. 2021) and baselines.

    Everything is BYOL (EMA target, cosine momentum, L = ||n(p_a) - n(sg z'_b)||^2 + ||n(p_b) - n(sg z'_a)||^2)
    except the predictor q, chosen by ``objective.predictor`` so that the paper's comparison is one switch:
      'directpred'  q(z) = W_p z, W_p set in closed form, not trained (below)
      'directcopy'  q(z) = W_p z, W_p = F / ||F||_F + eps I (``directcopy_norm``: 'frobenius' | 'spectral' | 'none')
      'linear'      a trained bias-free d x d linear predictor (PyTorch's default Linear init), the paper's baseline
      'mlp'         BYOL's trained 2-layer predictor Linear(predictor_hidden) - BN - ReLU - Linear(d)
      'none'        q = identity (the no-predictor ablation, which collapses in the paper)

    DirectPred / DirectCopy (and, for the eigen-alignment analysis, the trained linear predictor): the state holds F
    (the EMA correlation of the online projections, float32 [d, d]), mu (their EMA mean, [d]) and a count of batches
    seen. Inside ``loss``, from the detached projections f of both views: F <- rho F + (1 - rho) E[f f^T] (F = the
    first batch's E[f f^T]), likewise mu. In ``update``, on the steps that ``predictor_write`` picks, W_p is computed
    from F (or F - mu mu^T when ``center``) and written to params['predictor']['kernel']; ``lax.cond`` runs the
    decomposition only on those steps. With t = optimizer steps
    completed (``update``'s ``step``):
      'after_freq' (default)  write when t % freq == 0, i.e. after steps freq, 2 freq, ...; the predictor is never
                              trained (one of the ``frozen_heads``) and is the identity until the first write.
      'reference'             the paper's code (luckmatters ssl/real-dataset/byol_trainer.py: ``regulate_predictor``
                              after every optimizer step, writing when ``niter % predictor_freq == 0`` with niter
                              0-based): write when (t - 1) % freq == 0, i.e. after steps 1, freq + 1, 2 freq + 1, ...;
                              between writes the predictor is trained by the optimizer like any head (the code's
                              ``predictor_optimizer`` steps every iteration), and it starts from PyTorch's default
                              Linear init, so the first loss sees a random predictor, as in the code.
    With freq = 1 both write after every step and differ only in the predictor of the very first loss. DirectPred's W_p:
    F = U diag(s) U^T, p_j = max(sqrt(max(s_j, 0) / max s) + eps, 1e-4), W_p = U diag(p) U^T (``transform`` 'sqrt';
    'linear' and 'sqrt_eps_inside' are the paper code's alternatives), by ``solver`` 'eigh' (exact), 'newton_schulz'
    (matrix products only; eigh when its check fails, counted in the state's ``ns_fallbacks``) or 'diagonal'
    (diag(F) only, an ablation). See ssljax/objectives/predictors.py. DirectCopy's default normalisation is the
    Frobenius norm, as in its paper (Wang et al. 2021); the paper's public code (``predictor_reg=directcopy``) uses
    F + eps I unnormalised ('none'), and 'spectral' makes it DirectPred's 'linear' transform without the eigh.

    Defaults (the config keys): the paper's STL-10 code (facebookresearch/luckmatters ssl/real-dataset): projector
    (512,) -> 128 with BN, predictor 'directpred' (predictor_hidden (512,), predictor_dim 128 = projector_dim,
    predictor_bn for 'mlp'), ema_base 0.996 -> 1, bn_per_view True (the code runs each view through the networks
    separately), rho 0.3, eps 0.01, freq 1, predictor_write 'after_freq', center False, transform 'sqrt', solver
    'eigh'; directcopy_norm 'frobenius' (DirectCopy's paper). predictor_dim must equal projector_dim (the closed-form
    and the 'linear' predictors are d x d).
    """

    name = 'directpred'
    projector_hidden: tuple = (512,)
    projector_dim: int = 128
    kind: str = setting('directpred', key='predictor')
    predictor_hidden: tuple = (512,)
    predictor_dim: int = 128
    rho: float = 0.3
    eps: float = 0.01
    freq: int = 1
    predictor_write: str = 'after_freq'
    center: bool = False
    transform: str = 'sqrt'
    solver: str = 'eigh'
    directcopy_norm: str = 'frobenius'

    @classmethod
    def check_config(cls, config, num_devices: int) -> None:
        super().check_config(config, num_devices)
        v = cls.config_values(config)
        check_choice(v, 'predictor', PREDICTOR_KINDS)
        check_choice(v, 'predictor_write', PREDICTOR_WRITES)
        check_choice(v, 'transform', predictors.TRANSFORMS)
        check_choice(v, 'solver', predictors.METHODS)
        check_choice(v, 'directcopy_norm', predictors.NORMALIZATIONS)
        require(v['freq'] >= 1, 'freq', f'must be >= 1, got {v["freq"]}')
        require(0.0 <= v['rho'] < 1.0, 'rho', f'must be in [0, 1), got {v["rho"]}')

    @property
    def frozen_heads(self) -> tuple[str, ...]:  # instance-level: depends on the predictor kind and write mode
        return ('predictor',) if self.closed_form and self.predictor_write == 'after_freq' else ()

    @property
    def closed_form(self) -> bool:
        """Whether the predictor is set from F (DirectPred / DirectCopy) rather than trained."""
        return self.kind in ('directpred', 'directcopy')

    @property
    def tracks_correlation(self) -> bool:
        """Whether F is kept: to set the predictor, or (trained linear) for the paper's eigen-alignment analysis."""
        return self.kind in ('directpred', 'directcopy', 'linear')

    @property
    def predictor(self):
        dim, dtype = self.projector_dim, self.ctx.dtype
        if self.kind == 'mlp':
            return MLP(hidden_dims=tuple(self.predictor_hidden), out_dim=dim, use_bn=self.predictor_bn, dtype=dtype)
        if self.kind == 'linear':
            return LinearPredictor(dim=dim, use_bias=False, kernel_init=torch_linear_init, dtype=dtype)
        if self.kind == 'none':
            return None
        # set in closed form: identity until the first write, or the code's random init ('reference')
        return LinearPredictor(
            dim=dim,
            use_bias=False,
            dtype=dtype,
            kernel_init=torch_linear_init if self.predictor_write == 'reference' else None,
        )

    def init(self, rng, encoder_variables):
        heads, state = super().init(rng, encoder_variables)
        if self.tracks_correlation:
            dim = self.projector_dim
            state.update(
                corr=jnp.zeros((dim, dim), jnp.float32),
                mean=jnp.zeros((dim,), jnp.float32),
                count=jnp.zeros((), jnp.int32),
                ns_fallbacks=jnp.zeros((), jnp.int32),
            )
        return heads, state

    def pair_loss(self, p_a, p_b, t_a, t_b):
        return losses.byol_loss(p_a, p_b, t_a, t_b), {'pred_target_cosine': pair_cosine(p_a, p_b, t_a, t_b)}

    def track(self, objective_state, z_a, z_b):
        """F and mu from the detached projections of both views, and the batches seen."""
        if not self.tracks_correlation:
            return objective_state, {}
        state, seen = objective_state, objective_state['count'] > 0
        state = dict(
            state,
            corr=predictors.update_correlation(state['corr'], z_a, z_b, self.rho, seen),
            mean=predictors.update_mean(state['mean'], z_a, z_b, self.rho, seen),
            count=state['count'] + 1,
        )
        metrics = {'corr_trace': jnp.trace(state['corr'])}
        if self.solver == 'newton_schulz':
            metrics['ns_fallbacks'] = state['ns_fallbacks']
        return state, metrics

    def predictor_matrix(self, objective_state) -> tuple[jax.Array, jax.Array]:
        """(W_p from the state's F, whether Newton-Schulz fell back to eigh); float32 [d, d], bool scalar."""
        F = objective_state['corr']
        if self.center:
            F = predictors.centered_correlation(F, objective_state['mean'])
        if self.kind == 'directcopy':
            return predictors.directcopy_predictor(F, self.eps, self.directcopy_norm), jnp.zeros((), bool)
        if self.solver != 'newton_schulz':
            return predictors.predictor_from_correlation(F, self.eps, self.solver, self.transform), jnp.zeros((), bool)
        W, ok = predictors.newton_schulz_predictor(F, self.eps, self.transform)
        W = jax.lax.cond(ok, lambda: W, lambda: predictors.eigh_predictor(F, self.eps, self.transform))
        return W, jnp.logical_not(ok)

    def update(self, params, objective_state, step):
        params, state = super().update(params, objective_state, step)  # EMA of the target network
        if not self.closed_form:
            return params, state

        def write(args):
            p, fallbacks = args
            W, fell_back = self.predictor_matrix(state)
            return dict(p, predictor=dict(p['predictor'], kernel=W)), fallbacks + fell_back.astype(jnp.int32)

        done = jnp.asarray(step)  # optimizer steps completed, this one included
        phase = done - 1 if self.predictor_write == 'reference' else done
        due = (phase % self.freq == 0) & (state['count'] > 0)
        params, fallbacks = jax.lax.cond(due, write, lambda args: args, (params, state['ns_fallbacks']))
        return params, dict(state, ns_fallbacks=fallbacks)
