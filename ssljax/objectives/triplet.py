"""Median triplet loss (Wang et al. 2021, "Solving Inefficiency of Self-supervised Representation Learning")."""
from __future__ import annotations

import dataclasses

from ssljax.objectives import losses
from ssljax.objectives.base import Context, Forward, LossOutput, mlp_from_config, register
from ssljax.objectives.noncontrastive import BYOL, _with_batch_stats

NEGATIVES = ('median', 'truncated')


@register
@dataclasses.dataclass(frozen=True)
class Triplet(BYOL):
    """BYOL's online / EMA-target networks trained with a triplet loss whose negative is of median similarity.

    Online p = q(g(f(x))), target t = g'(f'(x)) (stop-gradient), d_ij = -2 <n(p_i), n(t_j)> (losses.triplet_loss):
        L = T(p_a, t_b) + T(p_b, t_a),   T(p, t) = mean_i max(0, gamma d_ii - d_an(i) + margin)
    ``negative`` 'median' (the paper): d_an(i) is the lower median of anchor i's negative distances;
    'truncated' (the released code, wanggrun/triplet TripletLossHead): the mean of the 2nd..10th most similar
    negatives (ranks ``truncate_lo``..``truncate_hi`` - 1, 0-based). gamma 2, margin 100 (never inactive).
    Target momentum, heads and BatchNorm (per view, statistics over the global batch: the reference uses SyncBN) are
    BYOL's. Not reproduced: the reference's random input resizing (online 96..224 px, target 128..224 px).

    Negatives and devices: the reference's negatives are the other images on the same GPU. Here anchors draw their
    negatives from groups of ``neg_group`` consecutive images of the global batch (0: the whole global batch, the
    default and the paper's formulation; the per-GPU batch, e.g. 256, reproduces the reference), independent of how
    the batch is spread over devices: loss and parameters agree between 1 and n devices for every neg_group.
    Keys: BYOL's plus gamma, margin, negative, truncate_lo, truncate_hi, neg_group.
    """
    name = 'triplet'
    gamma: float = 2.0
    margin: float = 100.0
    negative: str = 'median'
    truncate: tuple = (1, 10)
    neg_group: int = 0

    @classmethod
    def from_config(cls, config, ctx: Context) -> 'Triplet':
        cfg = config.objective
        negative, group = str(cfg.negative), int(cfg.neg_group)
        lo, hi = int(cfg.truncate_lo), int(cfg.truncate_hi)
        if negative not in NEGATIVES:
            raise ValueError(f'unknown objective.negative {negative!r}; known: {", ".join(NEGATIVES)}')
        if group < 0 or (group and ctx.global_batch % group):
            raise ValueError(f'config key "objective.neg_group" ({group}) must be 0 (the whole batch) or divide the '
                             f'global batch (batch_size = {ctx.global_batch})')
        size = group or ctx.global_batch
        if size < 2:
            raise ValueError(f'objective.neg_group: each anchor needs at least one negative, groups have {size} images')
        if negative == 'truncated' and not 0 <= lo < hi <= size - 1:
            raise ValueError(f'config keys "objective.truncate_lo/hi" ({lo}, {hi}) must satisfy 0 <= lo < hi <= '
                             f'{size - 1} (negatives per anchor with neg_group {group})')
        return cls(ctx=ctx, projector=mlp_from_config(cfg, 'projector', ctx.dtype),
                   predictor=mlp_from_config(cfg, 'predictor', ctx.dtype), ema_base=float(cfg.ema_base),
                   ema_final=float(cfg.ema_final), bn_per_view=bool(cfg.bn_per_view), gamma=float(cfg.gamma),
                   margin=float(cfg.margin), negative=negative, truncate=(lo, hi), neg_group=group)

    def pair(self, p, t):
        return losses.triplet_loss(p, t, self.gamma, self.margin, self.negative, self.truncate, self.neg_group)

    def loss(self, variables, objective_state, views, batch, rng):
        fw = Forward(variables, bn_per_view=self.bn_per_view)
        feats = [o['pooled'] for o in fw.encode(self.ctx.encoder, views[:2])]
        z_a, z_b = fw.apply_views('projector', self.projector, feats)
        p_a, p_b = fw.apply_views('predictor', self.predictor, [z_a, z_b])
        (t_a, t_b), target_stats = self.target_forward(objective_state, views[:2])
        loss = self.pair(p_a, t_b) + self.pair(p_b, t_a)
        metrics = {'pred_target_cosine': 0.5 * (losses.cosine_similarity(p_a, t_b).mean()
                                                + losses.cosine_similarity(p_b, t_a).mean())}
        state = _with_batch_stats(objective_state, 'target', target_stats)
        return loss, LossOutput(metrics, fw.batch_stats, state, feats[0])
