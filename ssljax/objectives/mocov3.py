"""MoCo v3 (Chen, Xie & He 2021): symmetric in-batch contrast of a predictor's output against momentum keys."""

from __future__ import annotations

import dataclasses
from typing import ClassVar

from ssljax.objectives import losses
from ssljax.objectives.base import check_temperature, cosine_ema_momentum, register, require
from ssljax.objectives.ema import EMATwoViewObjective, pair_cosine


@register
@dataclasses.dataclass(frozen=True)
class MoCoV3(EMATwoViewObjective):
    """MoCo v3: online encoder f, projector g, predictor h; momentum network f', g' (EMA).

    For views 1, 2 with q = h(g(f(x))) and k = g'(f'(x)) (stop-gradient), over the global batch (losses.mocov3_loss):
        ctr(q, k) = 2 tau * mean_i -log( exp(q_i.k_i / tau) / sum_j exp(q_i.k_j / tau) ),  L = ctr(q1, k2) + ctr(q2, k1)
    Momentum: m_t = 1 - (1 - m_0)(cos(pi t / T) + 1) / 2 with t = optimizer steps completed, as the reference
    (main_moco.py updates the momentum encoder before iteration t's forward with the momentum of iteration t), so
    ``momentum_schedule`` is ``cosine_ema_momentum`` itself, not BYOL's step-before.
    BatchNorm: SyncBN in the reference, i.e. statistics over the global batch here; each view runs on its own
    (``bn_per_view`` True; the reference calls the encoders once per view). Projector: Linear (no bias) - BN - ReLU
    layers and a last BN without affine; predictor likewise, its last BN only in the ViT setting
    (``predictor_last_bn``). ViT: ``freeze_patch_embed`` keeps the random patch projection ('encoder/patch_embed')
    fixed for the whole run (the reference's ``--stop-grad-conv1``). Everything is global, so 1 and n devices agree.
    Defaults (the config keys): the reference's ResNet-50 setting (facebookresearch/moco-v3 main_moco.py and
    CONFIG.md): temperature 1.0, projector 2048-4096-256 (projector_hidden (4096,), projector_dim 256), predictor
    256-4096-256 without a last BN, m_0 = ema_base 0.99 -> ema_final 1.0, freeze_patch_embed False (its argparse
    default; its ViT recipes set True, tau 0.2, a 3-layer projector and the predictor's last BN).
    Metric: ``pos_cosine``.
    """

    name = 'mocov3'
    temperature: float = 1.0
    predictor_last_bn: bool = False
    ema_base: float = 0.99
    freeze_patch_embed: bool = False
    momentum_schedule: ClassVar = staticmethod(cosine_ema_momentum)

    @classmethod
    def check_config(cls, config, num_devices: int) -> None:
        super().check_config(config, num_devices)
        v = cls.config_values(config)
        check_temperature(v)
        require(
            not v['freeze_patch_embed'] or str(config.model.backbone).startswith('vit'),
            'freeze_patch_embed',
            f'needs a ViT backbone (model.backbone = vit_*), got {config.model.backbone!r}',
        )

    @property
    def projector(self):
        return self.mlp('projector', last_bn=True, last_bn_affine=False, use_bias=False)

    @property
    def predictor(self):
        return self.mlp('predictor', last_bn=self.predictor_last_bn, last_bn_affine=False, use_bias=False)

    @property
    def freeze_steps(self) -> dict[str, int]:
        return {'encoder/patch_embed': max(1, self.ctx.total_steps)} if self.freeze_patch_embed else {}

    def pair_loss(self, p_a, p_b, t_a, t_b):
        loss = losses.mocov3_loss(p_a, t_b, self.temperature) + losses.mocov3_loss(p_b, t_a, self.temperature)
        return loss, {'pos_cosine': pair_cosine(p_a, p_b, t_a, t_b)}
