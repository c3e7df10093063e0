"""EMA targets: the momentum schedules, target copies, and the base of the "EMA target, two views" methods.

:class:`EMATwoViewObjective` is the skeleton BYOL, the median triplet loss, MoCo v3 and the BYOL predictor family
(DirectPred, DirectCopy, ...) share: an online encoder f, projector g and predictor q run on two views, an EMA target
f', g' (stop-gradient) on the same views, and after each optimizer step xi <- m_t xi + (1 - m_t) theta. A subclass
defines only ``pair_loss(p_a, p_b, t_a, t_b)`` (and its defaults, its architecture and, where its reference does,
its momentum schedule).
"""

from __future__ import annotations

import abc
import dataclasses
from typing import ClassVar, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from ssljax.objectives import losses
from ssljax.objectives.base import (
    Forward,
    LossOutput,
    Objective,
    PyTree,
    cosine_ema_momentum,
    ema_network,
    init_heads,
    require_predictor_dim,
)


def ema_momentum_at(base: float, step: jax.Array, total_steps: int, final: float = 1.0) -> jax.Array:
    """The target/teacher momentum applied after optimizer step t (0-based), given ``step`` = t + 1.

    ``Objective.update`` receives the number of optimizer steps completed, this one included (t + 1). BYOL's
    reference (byol_experiment.py ``_update_fn``: ``target_ema(global_step, ...)`` with the step count before the
    update), DINO's (main_dino.py: ``momentum_schedule[it]``, ``it`` 0-based) and solo-learn (``MomentumUpdater``: the
    tau computed at the previous batch's end from ``global_step``, ``base_tau`` for the first update) all use t, so
    the first update moves the target with tau_base exactly: tau_t = final - (final - base)(cos(pi t / T) + 1) / 2.
    """
    return cosine_ema_momentum(base, jnp.asarray(step) - 1, total_steps, final)


def ema_copy(encoder_variables: dict, heads: dict, names: tuple[str, ...]) -> dict:
    """A target/teacher network: copies of the encoder and the named heads (params and batch statistics)."""
    return jax.tree.map(
        jnp.copy,
        {
            'params': {'encoder': encoder_variables['params'], **{n: heads['params'][n] for n in names}},
            'batch_stats': {
                'encoder': encoder_variables.get('batch_stats', {}),
                **{n: heads['batch_stats'].get(n, {}) for n in names},
            },
        },
    )


def with_batch_stats(objective_state: dict, network: str, batch_stats: dict) -> dict:
    """The state with ``objective_state[network]['batch_stats']`` replaced (a target's running statistics)."""
    return dict(objective_state, **{network: dict(objective_state[network], batch_stats=batch_stats)})


def pair_cosine(p_a: jax.Array, p_b: jax.Array, t_a: jax.Array, t_b: jax.Array) -> jax.Array:
    """1/2 [mean_i s(p_a, t_b) + mean_i s(p_b, t_a)]: how close the predictions are to the other view's target."""
    return 0.5 * (losses.cosine_similarity(p_a, t_b).mean() + losses.cosine_similarity(p_b, t_a).mean())


@dataclasses.dataclass(frozen=True)
class EMATwoViewObjective(Objective):
    """Online f, g, q on views a, b and an EMA target f', g': L = pair_loss(p_a, p_b, t_a, t_b), p = q(g(f(x))),
    t = sg g'(f'(x)).

    The fields are the config keys every such method has, at BYOL's published values (Grill et al. 2020: projector and
    predictor 4096-256 with BN, tau_base 0.996 -> 1); subclasses redeclare those their reference sets otherwise.
    ``bn_per_view`` True: each view goes through the online networks and the target on its own (the references call
    them once per view), and the target's running statistics, kept in the state, come from its own forward passes.
    ``momentum_schedule(base, step, total_steps, final)`` gives m_t after ``step`` optimizer steps: ``ema_momentum_at``
    (BYOL's, the momentum of the step before) by default. State: {'target': {'params', 'batch_stats'}}.
    """

    projector_hidden: tuple = (4096,)
    projector_dim: int = 256
    projector_bn: bool = True
    predictor_hidden: tuple = (4096,)
    predictor_dim: int = 256
    predictor_bn: bool = True
    ema_base: float = 0.996
    ema_final: float = 1.0
    bn_per_view: bool = True
    momentum_schedule: ClassVar = staticmethod(ema_momentum_at)

    @classmethod
    def check_config(cls, config, num_devices: int) -> None:
        require_predictor_dim(cls.config_values(config), ': the prediction is compared with the target projection')

    @property
    def projector(self) -> nn.Module:
        return self.mlp('projector')

    @property
    def predictor(self) -> nn.Module | None:
        """q; None means no predictor (p = z)."""
        return self.mlp('predictor')

    def init(self, rng, encoder_variables):
        modules = {'projector': (self.projector, (jnp.zeros((2, self.ctx.feature_dim), jnp.float32),))}
        if self.predictor is not None:
            modules['predictor'] = (self.predictor, (jnp.zeros((2, self.projector_dim), jnp.float32),))
        heads = init_heads(rng, modules)
        return heads, {'target': ema_copy(encoder_variables, heads, ('projector',))}

    def online_forward(self, fw: Forward, views: Sequence[jax.Array]) -> tuple[list, list, list]:
        """-> (encoder features, projections z, predictions p) of the online network, one each per view."""
        feats = [o['pooled'] for o in fw.encode(self.ctx.encoder, views)]
        z = fw.apply_views('projector', self.projector, feats)
        p = z if self.predictor is None else fw.apply_views('predictor', self.predictor, z)
        return feats, z, p

    def target_forward(self, objective_state, views) -> tuple[list[jax.Array], dict]:
        """(sg g'(f'(v)) for each view, the target's updated batch statistics); BatchNorm in train mode."""
        target = Forward(objective_state['target'], bn_per_view=self.bn_per_view)
        feats = [o['pooled'] for o in target.encode(self.ctx.encoder, views)]
        z = [jax.lax.stop_gradient(z) for z in target.apply_views('projector', self.projector, feats)]
        return z, jax.lax.stop_gradient(target.batch_stats)

    def target_projections(self, objective_state, views):
        """sg g'(f'(v)) for each view, BatchNorm in train mode (batch statistics), as the references do."""
        return self.target_forward(objective_state, views)[0]

    @abc.abstractmethod
    def pair_loss(self, p_a: jax.Array, p_b: jax.Array, t_a: jax.Array, t_b: jax.Array) -> tuple[jax.Array, dict]:
        """-> (loss, metrics) from the online predictions and the target projections of views a, b."""

    def track(self, objective_state: dict, z_a: jax.Array, z_b: jax.Array) -> tuple[dict, dict]:
        """State kept from the online projections after the loss (DirectPred's F) -> (state, extra metrics)."""
        return objective_state, {}

    def loss(self, variables, objective_state, views, batch, rng):
        fw = Forward(variables, bn_per_view=self.bn_per_view)
        feats, (z_a, z_b), (p_a, p_b) = self.online_forward(fw, views[:2])
        (t_a, t_b), target_stats = self.target_forward(objective_state, views[:2])
        return self._loss_from(fw, feats, z_a, z_b, p_a, p_b, t_a, t_b, target_stats, objective_state)

    # Gradient accumulation: the online and target encoders per micro-batch, projector / predictor / loss globally.
    accumulation: ClassVar[str] = 'split'

    def features(self, variables, objective_state, views, batch, rng):
        online = [
            o['pooled'] for o in Forward(variables, bn_per_view=self.bn_per_view).encode(self.ctx.encoder, views[:2])
        ]
        target = Forward(objective_state['target'], bn_per_view=self.bn_per_view)
        fixed = [jax.lax.stop_gradient(o['pooled']) for o in target.encode(self.ctx.encoder, views[:2])]
        return online, fixed

    def head_loss(self, variables, objective_state, online, fixed, views, batch, rng):
        fw = Forward(variables, bn_per_view=self.bn_per_view)
        feats = list(online)
        z_a, z_b = fw.apply_views('projector', self.projector, feats)
        p_a, p_b = (z_a, z_b) if self.predictor is None else fw.apply_views('predictor', self.predictor, [z_a, z_b])
        target = Forward(objective_state['target'], bn_per_view=self.bn_per_view)
        t_a, t_b = [jax.lax.stop_gradient(z) for z in target.apply_views('projector', self.projector, list(fixed))]
        target_stats = jax.lax.stop_gradient(target.batch_stats)
        return self._loss_from(fw, feats, z_a, z_b, p_a, p_b, t_a, t_b, target_stats, objective_state)

    def _loss_from(self, fw, feats, z_a, z_b, p_a, p_b, t_a, t_b, target_stats, objective_state):
        loss, metrics = self.pair_loss(p_a, p_b, t_a, t_b)
        state = with_batch_stats(objective_state, 'target', target_stats)
        state, extra = self.track(state, z_a, z_b)
        return loss, LossOutput({**metrics, **extra}, fw.batch_stats, state, feats[0])

    def target_momentum(self, step: jax.Array) -> jax.Array:
        return self.momentum_schedule(self.ema_base, step, self.ctx.total_steps, self.ema_final)

    def update(self, params: dict, objective_state: PyTree, step: jax.Array) -> tuple[dict, PyTree]:
        """``step`` = optimizer steps completed (this one included); m_t from ``momentum_schedule``."""
        momentum = self.target_momentum(step)
        return params, dict(objective_state, target=ema_network(objective_state['target'], params, momentum))
