"""BYOL (Grill et al. 2020): an online predictor regressed onto an EMA target's projection of the other view."""

from __future__ import annotations

import dataclasses

from ssljax.objectives import losses
from ssljax.objectives.base import register
from ssljax.objectives.ema import EMATwoViewObjective, pair_cosine


@register
@dataclasses.dataclass(frozen=True)
class BYOL(EMATwoViewObjective):
    """BYOL: online network encoder f, projector g, predictor q; target network: EMA copies f', g'. For views a, b:
        L = ||n(q(g(f(a)))) - n(sg g'(f'(b)))||^2 + ||n(q(g(f(b)))) - n(sg g'(f'(a)))||^2   (batch means)
    After optimizer step t (0-based: tau_0 = tau_base, as the reference) the target moves towards the online weights,
        xi <- tau_t xi + (1 - tau_t) theta,  tau_t = 1 - (1 - tau_base)(cos(pi t / T) + 1) / 2   (ema_momentum_at).
    BatchNorm: ``bn_per_view`` True (BYOL's reference and solo-learn: each view goes through encoder, projector and
    predictor on its own, and so through the target, whose running statistics are kept in the state and updated by
    its forward passes, as the reference's target state is); False concatenates the views.

    Defaults (the config keys): the paper's ImageNet setting (deepmind-research byol): projector and predictor
    Linear(4096) - BN - ReLU - Linear(256), tau_base 0.996 (1000 epochs; 0.99 for 100/300) -> 1, views per view
    through BatchNorm. Metric: ``pred_target_cosine``.
    """

    name = 'byol'

    def pair_loss(self, p_a, p_b, t_a, t_b):
        return losses.byol_loss(p_a, p_b, t_a, t_b), {'pred_target_cosine': pair_cosine(p_a, p_b, t_a, t_b)}
