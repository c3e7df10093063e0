"""Non-contrastive objectives: two views are made to agree without negatives; collapse is avoided by asymmetry."""
from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from ssljax.models.heads import MLP, DINOHead, LinearPredictor, torch_linear_init
from ssljax.objectives import directpred, losses
from ssljax.objectives.base import (Context, Forward, LossOutput, Objective, TwoViewObjective, cosine_ema_momentum,
                                    ema_network, init_heads, mlp_from_config, register)


def _steps_per_epoch(ctx: Context) -> int:
    """Optimizer steps per epoch: the run's value, or num_examples // global_batch outside a run (at least 1)."""
    if ctx.steps_per_epoch > 0:
        return int(ctx.steps_per_epoch)
    return max(1, ctx.num_examples // max(1, ctx.global_batch))


def ema_momentum_at(base: float, step: jax.Array, total_steps: int, final: float = 1.0) -> jax.Array:
    """The target/teacher momentum applied after optimizer step t (0-based), given ``step`` = t + 1.

    ``Objective.update`` receives the number of optimizer steps completed, this one included (t + 1). BYOL's
    reference (byol_experiment.py ``_update_fn``: ``target_ema(global_step, ...)`` with the step count before the
    update), DINO's (main_dino.py: ``momentum_schedule[it]``, ``it`` 0-based) and solo-learn (``MomentumUpdater``: the
    tau computed at the previous batch's end from ``global_step``, ``base_tau`` for the first update) all use t, so
    the first update moves the target with tau_base exactly: tau_t = final - (final - base)(cos(pi t / T) + 1) / 2.
    """
    return cosine_ema_momentum(base, jnp.asarray(step) - 1, total_steps, final)


@register
@dataclasses.dataclass(frozen=True)
class BYOL(Objective):
    """BYOL (Grill et al. 2020).

    Online network: encoder f, projector g, predictor q; target network: EMA copies f', g'. For views a, b:
        L = ||n(q(g(f(a)))) - n(sg g'(f'(b)))||^2 + ||n(q(g(f(b)))) - n(sg g'(f'(a)))||^2   (batch means)
    After optimizer step t (0-based: tau_0 = tau_base, as the reference) the target moves towards the online weights,
        xi <- tau_t xi + (1 - tau_t) theta,  tau_t = 1 - (1 - tau_base)(cos(pi t / T) + 1) / 2   (ema_momentum_at).
    BatchNorm: ``bn_per_view`` True (the default, BYOL's reference and solo-learn: each view goes through encoder,
    projector and predictor on its own, and so through the target, whose running statistics are kept in the state
    and updated by its forward passes, as the reference's target state is); False concatenates the views.

    Keys (config.objective): projector_hidden, projector_dim, projector_bn, predictor_hidden, predictor_dim,
    predictor_bn, ema_base, ema_final, bn_per_view.
    """
    name = 'byol'
    projector: MLP = None
    predictor: MLP = None
    ema_base: float = 0.996
    ema_final: float = 1.0
    bn_per_view: bool = True

    @classmethod
    def from_config(cls, config, ctx: Context) -> 'BYOL':
        cfg = config.objective
        return cls(ctx=ctx, projector=mlp_from_config(cfg, 'projector', ctx.dtype),
                   predictor=mlp_from_config(cfg, 'predictor', ctx.dtype),
                   ema_base=cfg.ema_base, ema_final=cfg.ema_final, bn_per_view=bool(cfg.get('bn_per_view', True)))

    def init(self, rng, encoder_variables):
        feats = jnp.zeros((2, self.ctx.feature_dim), jnp.float32)
        proj = jnp.zeros((2, self.projector.out_dim), jnp.float32)
        heads = init_heads(rng, {'projector': (self.projector, (feats,)), 'predictor': (self.predictor, (proj,))})
        target = {
            'params': {'encoder': encoder_variables['params'], 'projector': heads['params']['projector']},
            'batch_stats': {'encoder': encoder_variables.get('batch_stats', {}),
                            'projector': heads['batch_stats'].get('projector', {})},
        }
        return heads, {'target': jax.tree.map(jnp.copy, target)}

    def target_forward(self, objective_state, views) -> tuple[list[jax.Array], dict]:
        """(sg g'(f'(v)) for each view, the target's updated batch statistics); BatchNorm in train mode."""
        target = Forward(objective_state['target'], bn_per_view=self.bn_per_view)
        feats = [o['pooled'] for o in target.encode(self.ctx.encoder, views)]
        z = [jax.lax.stop_gradient(z) for z in target.apply_views('projector', self.projector, feats)]
        return z, jax.lax.stop_gradient(target.batch_stats)

    def target_projections(self, objective_state, views):
        """sg g'(f'(v)) for each view, BatchNorm in train mode (batch statistics), as the reference does."""
        return self.target_forward(objective_state, views)[0]

    def loss(self, variables, objective_state, views, batch, rng):
        fw = Forward(variables, bn_per_view=self.bn_per_view)
        feats = [o['pooled'] for o in fw.encode(self.ctx.encoder, views[:2])]
        z_a, z_b = fw.apply_views('projector', self.projector, feats)
        p_a, p_b = fw.apply_views('predictor', self.predictor, [z_a, z_b])
        (t_a, t_b), target_stats = self.target_forward(objective_state, views[:2])
        loss = losses.byol_loss(p_a, p_b, t_a, t_b)
        metrics = {'pred_target_cosine': 0.5 * (losses.cosine_similarity(p_a, t_b).mean()
                                                + losses.cosine_similarity(p_b, t_a).mean())}
        state = _with_batch_stats(objective_state, 'target', target_stats)
        return loss, LossOutput(metrics, fw.batch_stats, state, feats[0])

    def update(self, params, objective_state, step):
        """``step`` = optimizer steps completed (this one included); the momentum is taken at step - 1."""
        momentum = ema_momentum_at(self.ema_base, step, self.ctx.total_steps, self.ema_final)
        return params, dict(objective_state, target=ema_network(objective_state['target'], params, momentum))


def _with_batch_stats(objective_state: dict, network: str, batch_stats: dict) -> dict:
    """The state with ``objective_state[network]['batch_stats']`` replaced (a target's running statistics)."""
    return dict(objective_state, **{network: dict(objective_state[network], batch_stats=batch_stats)})


# ======================================================================================================================
# SimSiam, the BYOL predictor family (DirectPred, DirectCopy, trained linear, 2-layer MLP, none), Barlow Twins, VICReg,
# DINO. Each from_config reads exactly the keys its docstring names from ``config.objective``.
# ======================================================================================================================

def _embedding_std(z: jax.Array) -> jax.Array:
    """SimSiam's collapse monitor: mean over dimensions of the batch std of n(z) (about 1/sqrt(D) when spread)."""
    return jnp.mean(jnp.std(losses.l2_normalize(jax.lax.stop_gradient(z)), axis=0))


def _ema_copy(encoder_variables: dict, heads: dict, names: tuple[str, ...]) -> dict:
    """A target/teacher network: copies of the encoder and the named heads (params and batch statistics)."""
    return jax.tree.map(jnp.copy, {
        'params': {'encoder': encoder_variables['params'], **{n: heads['params'][n] for n in names}},
        'batch_stats': {'encoder': encoder_variables.get('batch_stats', {}),
                        **{n: heads['batch_stats'].get(n, {}) for n in names}},
    })


@register
@dataclasses.dataclass(frozen=True)
class SimSiam(Objective):
    """SimSiam (Chen & He 2021): one network, a predictor, and a stop-gradient; no target network, no negatives.

    Encoder f, projector g (3 Linear layers, each followed by BN, the last BN without affine), predictor h
    (2048-512-2048 bottleneck with BN in the hidden layer). With z = g(f(x)) and p = h(z) for views a, b:
        L = -1/2 [ mean_i s(p_a, sg z_b) + mean_i s(p_b, sg z_a) ]          (s = cosine similarity)
    The published recipe keeps the predictor's learning rate constant: its config sets
    ``optimizer.constant_lr_heads = ('predictor',)``. BatchNorm: ``bn_per_view`` True (default; SimSiam's reference
    builder.py and solo-learn run x1 and x2 through the network separately); False concatenates the views.

    Keys (config.objective): projector_hidden (2048, 2048), projector_dim 2048, projector_bn True,
    predictor_hidden (512,), predictor_dim 2048 (must equal projector_dim), predictor_bn True, bn_per_view True.
    Metrics: ``pred_cosine`` (= -loss), ``z_std`` (std of n(z) over the batch, averaged over dims; collapse -> 0).
    """
    name = 'simsiam'
    projector: MLP = None
    predictor: MLP = None
    bn_per_view: bool = True

    @classmethod
    def from_config(cls, config, ctx: Context) -> 'SimSiam':
        cfg = config.objective
        if cfg.predictor_dim != cfg.projector_dim:
            raise ValueError(f'simsiam: objective.predictor_dim ({cfg.predictor_dim}) must equal '
                             f'objective.projector_dim ({cfg.projector_dim})')
        # Linear biases before a BN are redundant (the reference drops them); the last BN has no affine parameters.
        return cls(ctx=ctx, projector=mlp_from_config(cfg, 'projector', ctx.dtype, last_bn=True, last_bn_affine=False,
                                               use_bias=False),
                   predictor=mlp_from_config(cfg, 'predictor', ctx.dtype),
                   bn_per_view=bool(cfg.get('bn_per_view', True)))

    def init(self, rng, encoder_variables):
        feats = jnp.zeros((2, self.ctx.feature_dim), jnp.float32)
        proj = jnp.zeros((2, self.projector.out_dim), jnp.float32)
        return init_heads(rng, {'projector': (self.projector, (feats,)), 'predictor': (self.predictor, (proj,))}), {}

    def loss(self, variables, objective_state, views, batch, rng):
        fw = Forward(variables, bn_per_view=self.bn_per_view)
        feats = [o['pooled'] for o in fw.encode(self.ctx.encoder, views[:2])]
        z_a, z_b = fw.apply_views('projector', self.projector, feats)
        p_a, p_b = fw.apply_views('predictor', self.predictor, [z_a, z_b])
        loss = losses.simsiam_loss(p_a, p_b, z_a, z_b)
        metrics = {'pred_cosine': -loss, 'z_std': _embedding_std(z_a)}
        return loss, LossOutput(metrics, fw.batch_stats, objective_state, feats[0])


PREDICTOR_KINDS = ('directpred', 'directcopy', 'linear', 'mlp', 'none')
PREDICTOR_WRITES = ('after_freq', 'reference')


@register
@dataclasses.dataclass(frozen=True)
class PredictorBYOL(BYOL):
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
    (diag(F) only, an ablation). See ssljax/objectives/directpred.py. DirectCopy's default normalisation is the
    Frobenius norm, as in its paper (Wang et al. 2021); the paper's public code (``predictor_reg=directcopy``) uses
    F + eps I unnormalised ('none'), and 'spectral' makes it DirectPred's 'linear' transform without the eigh.

    Keys (config.objective): projector_hidden, projector_dim, projector_bn, predictor (kind, above),
    predictor_hidden, predictor_bn (used by 'mlp'), ema_base, ema_final, bn_per_view (True, as BYOL: the paper's code
    runs each view through the networks separately), rho, eps, freq, predictor_write, center, transform, solver,
    directcopy_norm (rho, eps, ... used by 'directpred' / 'directcopy'). Paper defaults (STL-10 code): projector
    (512,) -> 128 with BN, rho 0.3, eps 0.01, freq 1, center False, transform 'sqrt', solver 'eigh', EMA 0.996.
    """
    name = 'directpred'
    predictor: nn.Module | None = None
    kind: str = 'directpred'
    rho: float = 0.3
    eps: float = 0.01
    freq: int = 1
    center: bool = False
    transform: str = 'sqrt'
    solver: str = 'eigh'
    directcopy_norm: str = 'frobenius'
    predictor_write: str = 'after_freq'

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

    @classmethod
    def from_config(cls, config, ctx: Context) -> 'PredictorBYOL':
        cfg = config.objective
        kind = cfg.predictor
        if kind not in PREDICTOR_KINDS:
            raise ValueError(f'unknown objective.predictor {kind!r}; known: {", ".join(PREDICTOR_KINDS)}')
        if int(cfg.freq) < 1:
            raise ValueError(f'objective.freq must be >= 1, got {cfg.freq}')
        if not 0.0 <= cfg.rho < 1.0:
            raise ValueError(f'objective.rho must be in [0, 1), got {cfg.rho}')
        if cfg.transform not in directpred.TRANSFORMS:
            raise ValueError(f'unknown objective.transform {cfg.transform!r}; '
                             f'known: {", ".join(directpred.TRANSFORMS)}')
        if cfg.solver not in directpred.METHODS:
            raise ValueError(f'unknown objective.solver {cfg.solver!r}; known: {", ".join(directpred.METHODS)}')
        if cfg.directcopy_norm not in directpred.NORMALIZATIONS:
            raise ValueError(f'unknown objective.directcopy_norm {cfg.directcopy_norm!r}; '
                             f'known: {", ".join(directpred.NORMALIZATIONS)}')
        write = cfg.get('predictor_write', 'after_freq')
        if write not in PREDICTOR_WRITES:
            raise ValueError(f'unknown objective.predictor_write {write!r}; known: {", ".join(PREDICTOR_WRITES)}')
        projector = mlp_from_config(cfg, 'projector', ctx.dtype)
        dim = projector.out_dim
        if kind == 'mlp':
            predictor = MLP(hidden_dims=tuple(cfg.predictor_hidden), out_dim=dim, use_bn=cfg.predictor_bn,
                            dtype=ctx.dtype)
        elif kind == 'linear':
            predictor = LinearPredictor(dim=dim, use_bias=False, kernel_init=torch_linear_init, dtype=ctx.dtype)
        elif kind == 'none':
            predictor = None
        else:  # set in closed form: identity until the first write, or the code's random init ('reference')
            predictor = LinearPredictor(dim=dim, use_bias=False, dtype=ctx.dtype,
                                        kernel_init=torch_linear_init if write == 'reference' else None)
        return cls(ctx=ctx, projector=projector, predictor=predictor, ema_base=cfg.ema_base, ema_final=cfg.ema_final,
                   bn_per_view=bool(cfg.get('bn_per_view', True)), kind=kind, rho=float(cfg.rho), eps=float(cfg.eps),
                   freq=int(cfg.freq), center=bool(cfg.center), transform=cfg.transform, solver=cfg.solver,
                   directcopy_norm=cfg.directcopy_norm, predictor_write=write)

    def init(self, rng, encoder_variables):
        feats = jnp.zeros((2, self.ctx.feature_dim), jnp.float32)
        dim = self.projector.out_dim
        modules = {'projector': (self.projector, (feats,))}
        if self.predictor is not None:
            modules['predictor'] = (self.predictor, (jnp.zeros((2, dim), jnp.float32),))
        heads = init_heads(rng, modules)
        state = {'target': _ema_copy(encoder_variables, heads, ('projector',))}
        if self.tracks_correlation:
            state.update(corr=jnp.zeros((dim, dim), jnp.float32), mean=jnp.zeros((dim,), jnp.float32),
                         count=jnp.zeros((), jnp.int32), ns_fallbacks=jnp.zeros((), jnp.int32))
        return heads, state

    def loss(self, variables, objective_state, views, batch, rng):
        fw = Forward(variables, bn_per_view=self.bn_per_view)
        feats = [o['pooled'] for o in fw.encode(self.ctx.encoder, views[:2])]
        z_a, z_b = fw.apply_views('projector', self.projector, feats)
        if self.predictor is None:
            p_a, p_b = z_a, z_b
        else:
            p_a, p_b = fw.apply_views('predictor', self.predictor, [z_a, z_b])
        (t_a, t_b), target_stats = self.target_forward(objective_state, views[:2])
        loss = losses.byol_loss(p_a, p_b, t_a, t_b)
        metrics = {'pred_target_cosine': 0.5 * (losses.cosine_similarity(p_a, t_b).mean()
                                                + losses.cosine_similarity(p_b, t_a).mean())}
        state = _with_batch_stats(objective_state, 'target', target_stats)
        if self.tracks_correlation:
            seen = state['count'] > 0
            state = dict(state, corr=directpred.update_correlation(state['corr'], z_a, z_b, self.rho, seen),
                         mean=directpred.update_mean(state['mean'], z_a, z_b, self.rho, seen),
                         count=state['count'] + 1)
            metrics['corr_trace'] = jnp.trace(state['corr'])
            if self.solver == 'newton_schulz':
                metrics['ns_fallbacks'] = state['ns_fallbacks']
        return loss, LossOutput(metrics, fw.batch_stats, state, feats[0])

    def predictor_matrix(self, objective_state) -> tuple[jax.Array, jax.Array]:
        """(W_p from the state's F, whether Newton-Schulz fell back to eigh); float32 [d, d], bool scalar."""
        F = objective_state['corr']
        if self.center:
            F = directpred.centered_correlation(F, objective_state['mean'])
        if self.kind == 'directcopy':
            return directpred.directcopy_predictor(F, self.eps, self.directcopy_norm), jnp.zeros((), bool)
        if self.solver != 'newton_schulz':
            return directpred.predictor_from_correlation(F, self.eps, self.solver, self.transform), jnp.zeros((), bool)
        W, ok = directpred.newton_schulz_predictor(F, self.eps, self.transform)
        W = jax.lax.cond(ok, lambda: W, lambda: directpred.eigh_predictor(F, self.eps, self.transform))
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


@register
@dataclasses.dataclass(frozen=True)
class BarlowTwins(TwoViewObjective):
    """Barlow Twins (Zbontar et al. 2021): make the cross-correlation of the two views' embeddings the identity.

    z = g(f(x)) with projector g = [Linear - BN - ReLU] x 2 - Linear (no biases, as the reference); with C the D x D
    cross-correlation of the per-dimension standardised z_a, z_b over the global batch (biased variance, eps 1e-5),
        L = scale_loss * ( sum_i (1 - C_ii)^2 + lambd sum_{i != j} C_ij^2 )        (losses.barlow_twins_loss)

    BatchNorm: ``bn_per_view`` True (default; the reference's ``forward(y1, y2)`` runs backbone and projector on each
    view separately, as solo-learn does); False concatenates the views.

    Keys (config.objective): projector_hidden (8192, 8192), projector_dim 8192, projector_bn True, lambd 0.0051,
    scale_loss 1.0 (the published code's final version; solo-learn's CIFAR recipe uses 0.1), bn_per_view True.
    Metrics: ``pos_cosine`` (mean cosine of z_a and z_b).
    """
    name = 'barlow_twins'
    lambd: float = 0.0051
    scale_loss: float = 1.0
    bn_per_view: bool = True

    @classmethod
    def from_config(cls, config, ctx: Context) -> 'BarlowTwins':
        cfg = config.objective
        return cls(ctx=ctx, projector=mlp_from_config(cfg, 'projector', ctx.dtype, use_bias=False),
                   lambd=float(cfg.lambd), scale_loss=float(cfg.scale_loss),
                   bn_per_view=bool(cfg.get('bn_per_view', True)))

    def pair_loss(self, z_a, z_b):
        loss = self.scale_loss * losses.barlow_twins_loss(z_a, z_b, self.lambd)
        return loss, {'pos_cosine': losses.cosine_similarity(z_a, z_b).mean()}


@register
@dataclasses.dataclass(frozen=True)
class VICReg(TwoViewObjective):
    """VICReg (Bardes et al. 2022): invariance + variance + covariance terms, statistics over the global batch.

    z = g(f(x)) with projector g = [Linear - BN - ReLU] x 2 - Linear; (losses.vicreg_loss)
        L = sim_coeff MSE(z_a, z_b) + std_coeff 1/2 sum_z mean_d relu(1 - sqrt(Var_d(z) + 1e-4))
            + cov_coeff sum_z sum_{i != j} Cov(z)_ij^2 / D            (Var, Cov unbiased)

    BatchNorm: ``bn_per_view`` True (default; the reference's ``forward(x, y)`` runs backbone and projector on each
    view separately, as solo-learn does); False concatenates the views.

    Keys (config.objective): projector_hidden (8192, 8192), projector_dim 8192, projector_bn True,
    sim_coeff 25.0, std_coeff 25.0, cov_coeff 1.0, bn_per_view True.
    Metrics: ``invariance``, ``variance``, ``covariance`` (unweighted terms).
    """
    name = 'vicreg'
    sim_coeff: float = 25.0
    std_coeff: float = 25.0
    cov_coeff: float = 1.0
    bn_per_view: bool = True

    @classmethod
    def from_config(cls, config, ctx: Context) -> 'VICReg':
        cfg = config.objective
        return cls(ctx=ctx, projector=mlp_from_config(cfg, 'projector', ctx.dtype), sim_coeff=float(cfg.sim_coeff),
                   std_coeff=float(cfg.std_coeff), cov_coeff=float(cfg.cov_coeff),
                   bn_per_view=bool(cfg.get('bn_per_view', True)))

    def pair_loss(self, z_a, z_b):
        return losses.vicreg_loss(z_a, z_b, self.sim_coeff, self.std_coeff, self.cov_coeff)


@register
@dataclasses.dataclass(frozen=True)
class DINO(Objective):
    """DINO (Caron et al. 2021): self-distillation from an EMA teacher with centring and sharpening, multi-crop.

    Student = encoder f + DINOHead h (MLP, L2-normalised bottleneck, weight-normalised output of K units); teacher =
    EMA copies f', h'. ``views``: the first 2 are global crops, any further ones local crops (``multicrop`` recipe).
    The teacher sees only the 2 global views, the student all V views; with t_i = h'(f'(x_i)) and s_v = h(f(x_v)):
        q_i = softmax((t_i - c) / tau_t),
        L = mean over pairs (i < 2, v != i) of  mean_b -sum_k q_i log softmax(s_v / tau_s)
    (losses.dino_loss). After each loss the centre moves, c <- m c + (1 - m) mean over both global views and the batch
    of t (m = center_momentum). tau_s is fixed; tau_t follows the reference's per-epoch table (main_dino.py DINOLoss)
        tau_t(e) = concat(linspace(warmup_teacher_temp, teacher_temp, W), teacher_temp ...)[e],  e = step // S
    (W = warmup_teacher_temp_epochs, S = steps per epoch, step = losses computed before this one): with W >= 2,
    tau_t(e) = w + (t - w) min(e, W - 1) / (W - 1); W = 1 uses w in epoch 0 only; W = 0 uses t throughout.
    After optimizer step t (0-based) the teacher moves, xi <- m_t xi + (1 - m_t) theta, m_t from ema_base to
    ema_final on the per-step cosine (the reference's momentum_schedule[it]; see ema_momentum_at). The teacher's
    BatchNorm running statistics come from its own forward passes (the reference's EMA covers parameters only).

    Also as the reference: evaluation scores the teacher by default (``eval_network = 'teacher'``; the student with
    ``--config.evals.<name>.network=online``), and the head's last layer (``head/last_layer``: the weight-normalised
    prototypes V and, without norm_last_layer, g) is frozen for the first ``freeze_last_layer_epochs`` epochs
    (``freeze_steps``; the optimizer drops its updates, as ``cancel_gradients_last_layer`` drops its gradients).
    BatchNorm: ``bn_per_view`` False (default; the reference's MultiCropWrapper concatenates the crops of equal
    resolution for the backbone and all crops for the head); True runs every view on its own (solo-learn).
    Gradient clipping and DINO's weight-decay schedule are optimizer keys (optimizer.clip_grad, weight_decay_end).
    State: {'teacher', 'center' [K], 'step' (losses computed, drives the tau_t table)}.

    Keys (config.objective): head_out 65536, head_hidden 2048, head_bottleneck 256, head_layers 3, head_bn False,
    norm_last_layer True, student_temp 0.1, teacher_temp 0.07, warmup_teacher_temp 0.04,
    warmup_teacher_temp_epochs 30, center_momentum 0.9, ema_base 0.996, ema_final 1.0, freeze_last_layer_epochs 1,
    bn_per_view False.
    Metrics: ``teacher_temp``, ``teacher_entropy`` (mean entropy of q; log K when uniform, 0 when one-hot),
    ``student_teacher_ce`` (= loss).
    """
    name = 'dino'
    eval_network = 'teacher'
    head: DINOHead = None
    student_temp: float = 0.1
    teacher_temp: float = 0.07
    warmup_teacher_temp: float = 0.04
    warmup_teacher_temp_epochs: int = 0
    steps_per_epoch: int = 1
    center_momentum: float = 0.9
    ema_base: float = 0.996
    ema_final: float = 1.0
    freeze_last_layer_epochs: int = 1
    bn_per_view: bool = False

    @classmethod
    def from_config(cls, config, ctx: Context) -> 'DINO':
        cfg = config.objective
        head = DINOHead(out_dim=cfg.head_out, hidden_dim=cfg.head_hidden, bottleneck_dim=cfg.head_bottleneck,
                        num_layers=cfg.head_layers, use_bn=cfg.head_bn, norm_last_layer=cfg.norm_last_layer,
                        dtype=ctx.dtype)
        warmup_epochs = int(round(cfg.warmup_teacher_temp_epochs))
        freeze_epochs = int(round(cfg.get('freeze_last_layer_epochs', 1)))
        if warmup_epochs < 0 or freeze_epochs < 0:
            raise ValueError('objective.warmup_teacher_temp_epochs and objective.freeze_last_layer_epochs must be '
                             f'>= 0, got {cfg.warmup_teacher_temp_epochs} and {freeze_epochs}')
        return cls(ctx=ctx, head=head, student_temp=float(cfg.student_temp), teacher_temp=float(cfg.teacher_temp),
                   warmup_teacher_temp=float(cfg.warmup_teacher_temp), warmup_teacher_temp_epochs=warmup_epochs,
                   steps_per_epoch=_steps_per_epoch(ctx), center_momentum=float(cfg.center_momentum),
                   ema_base=float(cfg.ema_base), ema_final=float(cfg.ema_final),
                   freeze_last_layer_epochs=freeze_epochs, bn_per_view=bool(cfg.get('bn_per_view', False)))

    @property
    def freeze_steps(self) -> dict[str, int]:
        """{'head/last_layer': freeze_last_layer_epochs x steps per epoch} (nothing when 0 epochs)."""
        steps = self.freeze_last_layer_epochs * self.steps_per_epoch
        return {'head/last_layer': steps} if steps > 0 else {}

    def teacher_temperature(self, step: jax.Array) -> jax.Array:
        """tau_t for the loss computed after ``step`` optimizer steps: the reference's per-epoch table (above)."""
        w, t, W = self.warmup_teacher_temp, self.teacher_temp, self.warmup_teacher_temp_epochs
        if W <= 0:
            return jnp.asarray(t, jnp.float32)
        epoch = jnp.asarray(step) // self.steps_per_epoch
        frac = jnp.clip(epoch / max(W - 1, 1), 0.0, 1.0)
        return (w + (t - w) * frac).astype(jnp.float32)

    def init(self, rng, encoder_variables):
        feats = jnp.zeros((2, self.ctx.feature_dim), jnp.float32)
        heads = init_heads(rng, {'head': (self.head, (feats,))})
        state = {'teacher': _ema_copy(encoder_variables, heads, ('head',)),
                 'center': jnp.zeros((self.head.out_dim,), jnp.float32), 'step': jnp.zeros((), jnp.int32)}
        return heads, state

    def loss(self, variables, objective_state, views, batch, rng):
        if len(views) < 2:
            raise ValueError(f'dino needs at least 2 views (2 global crops first), got {len(views)}')
        fw = Forward(variables, bn_per_view=self.bn_per_view)
        feats = [o['pooled'] for o in fw.encode(self.ctx.encoder, views)]
        student = fw.apply_views('head', self.head, feats)
        teacher_fw = Forward(objective_state['teacher'], bn_per_view=self.bn_per_view)
        t_feats = [o['pooled'] for o in teacher_fw.encode(self.ctx.encoder, views[:2])]
        teacher = [jax.lax.stop_gradient(t) for t in teacher_fw.apply_views('head', self.head, t_feats)]
        center = objective_state['center']
        temp = self.teacher_temperature(objective_state['step'])
        loss = losses.dino_loss(student, teacher, center, self.student_temp, temp)
        batch_center = jnp.mean(jnp.concatenate(teacher, axis=0), axis=0)
        new_center = self.center_momentum * center + (1.0 - self.center_momentum) * batch_center
        q = jax.nn.softmax((teacher[0] - center) / temp, axis=-1)
        metrics = {'teacher_temp': temp, 'student_teacher_ce': loss,
                   'teacher_entropy': jnp.mean(-jnp.sum(q * jnp.log(jnp.maximum(q, 1e-30)), axis=-1))}
        state = _with_batch_stats(objective_state, 'teacher', jax.lax.stop_gradient(teacher_fw.batch_stats))
        state = dict(state, center=new_center, step=objective_state['step'] + 1)
        return loss, LossOutput(metrics, fw.batch_stats, state, feats[0])

    def update(self, params, objective_state, step):
        """``step`` = optimizer steps completed (this one included); the momentum is taken at step - 1."""
        momentum = ema_momentum_at(self.ema_base, step, self.ctx.total_steps, self.ema_final)
        return params, dict(objective_state, teacher=ema_network(objective_state['teacher'], params, momentum))
