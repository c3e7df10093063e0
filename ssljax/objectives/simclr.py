"""SimCLR (Chen et al. 2020): NT-Xent over the global batch."""

from __future__ import annotations

import dataclasses

from ssljax.objectives import losses
from ssljax.objectives.base import TwoViewObjective, check_temperature, register


@register
@dataclasses.dataclass(frozen=True)
class SimCLR(TwoViewObjective):
    """SimCLR: L = NT-Xent(g(f(x_a)), g(f(x_b)); tau) over the global batch (``losses.nt_xent``).

    Two augmented views per image, encoder f, projector g; every other image of the global batch (on every device)
    is a negative and gradients flow through all of them:
        l_i = -log( exp(s(z_i, z_j(i)) / tau) / sum_{k != i} exp(s(z_i, z_k) / tau) ),  summed per view as the
    reference (the sum of the two views' means).
    Defaults (config keys): SimCLR v1's ImageNet setting (google-research/simclr): temperature 0.1 (batch 4096),
    projector Linear(d, 2048) - BN - ReLU - Linear(128) (projector_hidden (2048,), projector_dim 128, projector_bn
    True; hidden = the ResNet-50 width). ``bn_per_view`` False (the reference concatenates both views into one
    batch, so BatchNorm normalises over 2B rows); True runs each view on its own (solo-learn's CIFAR recipe).
    Metric: ``pos_cosine``.
    """

    name = 'simclr'
    temperature: float = 0.1

    @classmethod
    def check_config(cls, config, num_devices: int) -> None:
        check_temperature(cls.config_values(config))

    def pair_loss(self, z_a, z_b):
        return losses.nt_xent(z_a, z_b, self.temperature), {'pos_cosine': losses.cosine_similarity(z_a, z_b).mean()}
