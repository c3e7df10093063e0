"""Median triplet loss (Wang et al. 2021, "Solving Inefficiency of Self-supervised Representation Learning")."""

from __future__ import annotations

import dataclasses

from ssljax.objectives import losses
from ssljax.objectives.base import check_choice, register, require
from ssljax.objectives.ema import EMATwoViewObjective, pair_cosine

NEGATIVES = ('median', 'truncated')


@register
@dataclasses.dataclass(frozen=True)
class Triplet(EMATwoViewObjective):
    """BYOL's online / EMA-target networks trained with a triplet loss whose negative is of median similarity.

    Online p = q(g(f(x))), target t = g'(f'(x)) (stop-gradient), d_ij = -2 <n(p_i), n(t_j)> (losses.triplet_loss):
        L = T(p_a, t_b) + T(p_b, t_a),   T(p, t) = mean_i max(0, gamma d_ii - d_an(i) + margin)
    ``negative`` 'median' (the paper): d_an(i) is the lower median of anchor i's negative distances;
    'truncated' (the released code, wanggrun/triplet TripletLossHead): the mean of the 2nd..10th most similar
    negatives (ranks ``truncate_lo``..``truncate_hi`` - 1, 0-based). Target momentum (BYOL's step-before cosine),
    heads and BatchNorm (per view, statistics over the global batch: the reference uses SyncBN) are BYOL's. Not
    reproduced: the reference's random input resizing (online 96..224 px, target 128..224 px).

    Negatives and devices: the reference's negatives are the other images on the same GPU. Here anchors draw their
    negatives from groups of ``neg_group`` consecutive images of the global batch (0: the whole global batch, the
    default and the paper's formulation; the per-GPU batch, e.g. 256, reproduces the reference), independent of how
    the batch is spread over devices: loss and parameters agree between 1 and n devices for every neg_group.
    Defaults (the config keys): the released code's ImageNet config (configs/selfsup/triplet/
    r50_bs4096_accumulate4_ep1000_fp16_triplet_gpu3090.py and TripletLossHead): BYOL's 4096-256 heads, base
    momentum ema_base 0.99 -> 1, gamma 2, margin 100, truncate_lo 1, truncate_hi 10; negative 'median' and
    neg_group 0 (the paper's formulation). Metric: ``pred_target_cosine``.
    """

    name = 'triplet'
    ema_base: float = 0.99
    gamma: float = 2.0
    margin: float = 100.0
    negative: str = 'median'
    truncate_lo: int = 1
    truncate_hi: int = 10
    neg_group: int = 0

    @classmethod
    def check_config(cls, config, num_devices: int) -> None:
        super().check_config(config, num_devices)
        v = cls.config_values(config)
        batch, group, lo, hi = int(config.batch_size), v['neg_group'], v['truncate_lo'], v['truncate_hi']
        check_choice(v, 'negative', NEGATIVES)
        require(
            group >= 0 and not (group and batch % group),
            'neg_group',
            f'({group}) must be 0 (the whole batch) or divide the global batch (batch_size = {batch})',
        )
        size = group or batch
        require(size >= 2, 'neg_group', f'leaves each anchor no negative: groups have {size} images')
        if v['negative'] == 'truncated':
            require(0 <= lo < hi, 'truncate_lo', f'({lo}) must satisfy 0 <= truncate_lo < truncate_hi ({hi})')
            require(
                hi <= size - 1,
                'truncate_hi',
                f'({hi}) must be <= {size - 1}, the negatives per anchor with neg_group {group} and batch_size {batch}',
            )

    @property
    def truncate(self) -> tuple[int, int]:
        """The truncated negative's rank range [truncate_lo, truncate_hi)."""
        return self.truncate_lo, self.truncate_hi

    def pair(self, p, t):
        return losses.triplet_loss(p, t, self.gamma, self.margin, self.negative, self.truncate, self.neg_group)

    def pair_loss(self, p_a, p_b, t_a, t_b):
        return self.pair(p_a, t_b) + self.pair(p_b, t_a), {'pred_target_cosine': pair_cosine(p_a, p_b, t_a, t_b)}
