"""DCL and DCLW (Yeh et al. 2022): SimCLR with the positive pair removed from the InfoNCE denominator."""
from __future__ import annotations

import dataclasses

from ssljax.objectives import losses
from ssljax.objectives.base import Context, TwoViewObjective, mlp_from_config, register

WEIGHT_NORMS = ('mean', 'sum')


@register
@dataclasses.dataclass(frozen=True)
class DCL(TwoViewObjective):
    """Decoupled contrastive learning: L = sum over both directions of mean_i L_i (losses.dcl_loss), where for
    anchor u_i = n(z_a,i) with positive v_i = n(z_b,i)
        L_i = -w_i <u_i, v_i> / tau + log sum_{j != i} [ exp(<u_i, u_j> / tau) + exp(<u_i, v_j> / tau) ]
    over the 2B - 2 negatives of the global batch (gradients through all of them), w_i = 1.

    Encoder, projector, views and BatchNorm (``bn_per_view``) are SimCLR's; only the loss changes, as in the paper.
    Everything is global, so 1 and n devices agree. Keys (config.objective): temperature, projector_hidden,
    projector_dim, projector_bn, bn_per_view. Metric: ``pos_cosine``.
    """
    name = 'dcl'
    temperature: float = 0.1
    sigma: float | None = None
    weight_norm: str = 'mean'

    @classmethod
    def from_config(cls, config, ctx: Context) -> 'DCL':
        cfg = config.objective
        temperature = float(cfg.temperature)
        if not temperature > 0:
            raise ValueError(f'config key "objective.temperature" must be > 0, got {cfg.temperature!r}')
        return cls(ctx=ctx, projector=mlp_from_config(cfg, 'projector', ctx.dtype), temperature=temperature,
                   bn_per_view=bool(cfg.get('bn_per_view', False)), **cls.weighting(cfg))

    @classmethod
    def weighting(cls, cfg) -> dict:
        return {}

    def pair_loss(self, z_a, z_b):
        loss = losses.dcl_loss(z_a, z_b, self.temperature, self.sigma, self.weight_norm)
        return loss, {'pos_cosine': losses.cosine_similarity(z_a, z_b).mean()}


@register
@dataclasses.dataclass(frozen=True)
class DCLW(DCL):
    """DCLW: DCL with the positive term weighted by a negative von Mises-Fisher weight, sigma = 0.5:
        w_i = 2 - exp(<u_i, v_i> / sigma) / mean_j exp(<u_j, v_j> / sigma)          (``weight_norm`` 'mean', the paper)
    so easy positives (already aligned) weigh less than hard ones; the mean of w over the batch is 1.
    ``weight_norm`` 'sum' divides by the sum instead of the mean (w_i = 2 - softmax_i, weights near 2), as the
    raminnakhli/Decoupled-Contrastive-Learning implementation does. Keys: DCL's plus sigma, weight_norm.
    """
    name = 'dclw'

    @classmethod
    def weighting(cls, cfg) -> dict:
        sigma, norm = float(cfg.sigma), str(cfg.weight_norm)
        if not sigma > 0:
            raise ValueError(f'config key "objective.sigma" must be > 0, got {cfg.sigma!r}')
        if norm not in WEIGHT_NORMS:
            raise ValueError(f'unknown objective.weight_norm {norm!r}; known: {", ".join(WEIGHT_NORMS)}')
        return dict(sigma=sigma, weight_norm=norm)
