"""DCL and DCLW (Yeh et al. 2022): SimCLR with the positive pair removed from the InfoNCE denominator."""

from __future__ import annotations

import dataclasses

from ssljax.objectives import losses
from ssljax.objectives.base import TwoViewObjective, check_choice, check_temperature, register

WEIGHT_NORMS = ('mean', 'sum')


@register
@dataclasses.dataclass(frozen=True)
class DCL(TwoViewObjective):
    """Decoupled contrastive learning: L = sum over both directions of mean_i L_i (losses.dcl_loss), where for
    anchor u_i = n(z_a,i) with positive v_i = n(z_b,i)
        L_i = -w_i <u_i, v_i> / tau + log sum_{j != i} [ exp(<u_i, u_j> / tau) + exp(<u_i, v_j> / tau) ]
    over the 2B - 2 negatives of the global batch (gradients through all of them), w_i = 1.

    Encoder, projector, views and BatchNorm (``bn_per_view``) are SimCLR's; only the loss changes, as in the paper.
    Everything is global, so 1 and n devices agree. Defaults: temperature 0.1 (the paper's ImageNet setting and
    lightly's DCLLoss), SimCLR's projector (2048-128 with BN) and joint BatchNorm over the views.
    Metric: ``pos_cosine``.
    """

    name = 'dcl'
    temperature: float = 0.1

    @classmethod
    def check_config(cls, config, num_devices: int) -> None:
        check_temperature(cls.config_values(config))

    def weighting(self) -> tuple[float | None, str]:
        """(sigma, weight_norm) of the positive's weight; (None, 'mean') is w_i = 1."""
        return None, 'mean'

    def pair_loss(self, z_a, z_b):
        sigma, weight_norm = self.weighting()
        loss = losses.dcl_loss(z_a, z_b, self.temperature, sigma, weight_norm)
        return loss, {'pos_cosine': losses.cosine_similarity(z_a, z_b).mean()}


@register
@dataclasses.dataclass(frozen=True)
class DCLW(DCL):
    """DCLW: DCL with the positive term weighted by a negative von Mises-Fisher weight, sigma = 0.5:
        w_i = 2 - exp(<u_i, v_i> / sigma) / mean_j exp(<u_j, v_j> / sigma)          (``weight_norm`` 'mean', the paper)
    so easy positives (already aligned) weigh less than hard ones; the mean of w over the batch is 1.
    'mean' = 2 - B softmax_i is also the form of raminnakhli/Decoupled-Contrastive-Learning (a third-party
    implementation; its HEAD 0b9b76d) and of lightly's DCLWLoss (which detaches w; here and in raminnakhli's code the
    gradient flows through w). ``weight_norm`` 'sum' divides by the sum instead (w_i = 2 - softmax_i, weights near 2),
    which that repository had only at commit 50991ef (reverted the next day). Defaults: DCL's plus the paper's sigma
    0.5 and 'mean'.
    """

    name = 'dclw'
    sigma: float = 0.5
    weight_norm: str = 'mean'

    @classmethod
    def check_config(cls, config, num_devices: int) -> None:
        super().check_config(config, num_devices)
        v = cls.config_values(config)
        check_temperature(v, 'sigma')
        check_choice(v, 'weight_norm', WEIGHT_NORMS)

    def weighting(self):
        return self.sigma, self.weight_norm
