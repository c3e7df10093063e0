"""SimCLR (Chen et al. 2020): NT-Xent over the global batch."""

from __future__ import annotations

import dataclasses

from ssljax.objectives import losses
from ssljax.objectives.base import TwoViewObjective, check_choice, check_temperature, register

REDUCTIONS = ('sum_views', 'mean')


@register
@dataclasses.dataclass(frozen=True)
class SimCLR(TwoViewObjective):
    """SimCLR: L = NT-Xent(g(f(x_a)), g(f(x_b)); tau) over the global batch (``losses.nt_xent``).

    Two augmented views per image, encoder f, projector g; every other image of the global batch (on every device)
    is a negative and gradients flow through all of them:
        l_i = -log( exp(s(z_i, z_j(i)) / tau) / sum_{k != i} exp(s(z_i, z_k) / tau) ).
    ``reduction`` 'sum_views' (the default, SimCLR's own code: google-research/simclr sums the cross-entropy of each
    view's B anchors, each a mean) gives L = (1/B) sum_{i in a} l_i + (1/B) sum_{i in b} l_i (``losses.nt_xent``);
    'mean' averages over the 2B anchors, L = (1/2B) sum_i l_i, half of it (solo-learn's ``simclr_loss_func`` and
    lightly's NTXentLoss; ``losses.nt_xent_mean``). The factor 2 scales every gradient: LARS's trust ratio absorbs it
    only for the adapted tensors whose ||g|| dominates wd ||w||; the biases and norms (not adapted) get exactly 2x.
    Defaults (config keys): SimCLR v1's ImageNet setting (google-research/simclr): temperature 0.1 (batch 4096),
    projector Linear(d, 2048) - BN - ReLU - Linear(128) (projector_hidden (2048,), projector_dim 128, projector_bn
    True; hidden = the ResNet-50 width). ``bn_per_view`` False (the reference concatenates both views into one
    batch, so BatchNorm normalises over 2B rows); True runs each view on its own (solo-learn's CIFAR recipe).
    Metric: ``pos_cosine``.
    """

    name = 'simclr'
    temperature: float = 0.1
    reduction: str = 'sum_views'

    @classmethod
    def check_config(cls, config, num_devices: int) -> None:
        v = cls.config_values(config)
        check_temperature(v)
        check_choice(v, 'reduction', REDUCTIONS)

    def pair_loss(self, z_a, z_b):
        nt_xent = losses.nt_xent if self.reduction == 'sum_views' else losses.nt_xent_mean
        return nt_xent(z_a, z_b, self.temperature), {'pos_cosine': losses.cosine_similarity(z_a, z_b).mean()}
