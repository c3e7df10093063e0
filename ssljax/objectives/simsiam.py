"""SimSiam (Chen & He 2021): one network, a predictor and a stop-gradient; no target network, no negatives."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from ssljax.objectives import losses
from ssljax.objectives.base import Forward, LossOutput, Objective, init_heads, register, require_predictor_dim


def embedding_std(z: jax.Array) -> jax.Array:
    """SimSiam's collapse monitor: mean over dimensions of the batch std of n(z) (about 1/sqrt(D) when spread)."""
    return jnp.mean(jnp.std(losses.l2_normalize(jax.lax.stop_gradient(z)), axis=0))


@register
@dataclasses.dataclass(frozen=True)
class SimSiam(Objective):
    """SimSiam: encoder f, projector g (3 Linear layers, each followed by BN, the last BN without affine, no biases),
    predictor h (a bottleneck with BN in the hidden layer). With z = g(f(x)) and p = h(z) for views a, b:
        L = -1/2 [ mean_i s(p_a, sg z_b) + mean_i s(p_b, sg z_a) ]          (s = cosine similarity)
    The published recipe keeps the predictor's learning rate constant: its config sets
    ``optimizer.constant_lr_heads = ('predictor',)``. BatchNorm: ``bn_per_view`` True (SimSiam's reference
    builder.py and solo-learn run x1 and x2 through the network separately); False concatenates the views.

    Defaults (the config keys): the paper's ImageNet setting (facebookresearch/simsiam): projector_hidden
    (2048, 2048), projector_dim 2048, predictor 2048-512-2048 (predictor_hidden (512,), predictor_dim 2048, which
    must equal projector_dim), BN in both, bn_per_view True.
    Metrics: ``pred_cosine`` (= -loss), ``z_std`` (std of n(z) over the batch, averaged over dims; collapse -> 0).
    """

    name = 'simsiam'
    projector_hidden: tuple = (2048, 2048)
    projector_dim: int = 2048
    projector_bn: bool = True
    predictor_hidden: tuple = (512,)
    predictor_dim: int = 2048
    predictor_bn: bool = True
    bn_per_view: bool = True

    @classmethod
    def check_config(cls, config, num_devices: int) -> None:
        require_predictor_dim(cls.config_values(config), ' for simsiam')

    @property
    def projector(self):
        # Linear biases before a BN are redundant (the reference drops them); the last BN has no affine parameters.
        return self.mlp('projector', last_bn=True, last_bn_affine=False, use_bias=False)

    @property
    def predictor(self):
        return self.mlp('predictor')

    def init(self, rng, encoder_variables):
        feats = jnp.zeros((2, self.ctx.feature_dim), jnp.float32)
        proj = jnp.zeros((2, self.projector_dim), jnp.float32)
        return init_heads(rng, {'projector': (self.projector, (feats,)), 'predictor': (self.predictor, (proj,))}), {}

    def loss(self, variables, objective_state, views, batch, rng):
        fw = Forward(variables, bn_per_view=self.bn_per_view)
        feats = [o['pooled'] for o in fw.encode(self.ctx.encoder, views[:2])]
        z_a, z_b = fw.apply_views('projector', self.projector, feats)
        p_a, p_b = fw.apply_views('predictor', self.predictor, [z_a, z_b])
        loss = losses.simsiam_loss(p_a, p_b, z_a, z_b)
        metrics = {'pred_cosine': -loss, 'z_std': embedding_std(z_a)}
        return loss, LossOutput(metrics, fw.batch_stats, objective_state, feats[0])
