"""Barlow Twins (Zbontar et al. 2021): make the cross-correlation of the two views' embeddings the identity."""

from __future__ import annotations

import dataclasses

from ssljax.objectives import losses
from ssljax.objectives.base import TwoViewObjective, register, require


@register
@dataclasses.dataclass(frozen=True)
class BarlowTwins(TwoViewObjective):
    """Barlow Twins: z = g(f(x)) with projector g = [Linear - BN - ReLU] x 2 - Linear (no biases, as the reference);
    with C the D x D cross-correlation of the per-dimension standardised z_a, z_b over the global batch (biased
    variance, eps 1e-5),
        L = scale_loss * ( sum_i (1 - C_ii)^2 + lambd sum_{i != j} C_ij^2 )        (losses.barlow_twins_loss)

    BatchNorm: ``bn_per_view`` True (the reference's ``forward(y1, y2)`` runs backbone and projector on each view
    separately, as solo-learn does); False concatenates the views.

    Defaults (the config keys): the paper's ImageNet setting (facebookresearch/barlowtwins main.py): projector
    8192-8192-8192 (projector_hidden (8192, 8192), projector_dim 8192, BN), lambd 0.0051, scale_loss 1.0 (the
    published code's final version, which dropped the earlier 0.024 scale), bn_per_view True.
    Metric: ``pos_cosine`` (mean cosine of z_a and z_b).
    """

    name = 'barlow_twins'
    projector_hidden: tuple = (8192, 8192)
    projector_dim: int = 8192
    lambd: float = 0.0051
    scale_loss: float = 1.0
    bn_per_view: bool = True
    projector_arch = dict(use_bias=False)

    @classmethod
    def check_config(cls, config, num_devices: int) -> None:
        v = cls.config_values(config)
        require(v['lambd'] >= 0, 'lambd', f'must be >= 0, got {v["lambd"]}')
        require(v['scale_loss'] > 0, 'scale_loss', f'must be > 0, got {v["scale_loss"]}')

    def pair_loss(self, z_a, z_b):
        loss = self.scale_loss * losses.barlow_twins_loss(z_a, z_b, self.lambd)
        return loss, {'pos_cosine': losses.cosine_similarity(z_a, z_b).mean()}
