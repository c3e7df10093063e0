"""Objectives: importing this package registers every method in ``base.OBJECTIVES`` (one file per method)."""

from ssljax.objectives import dcl, gsimclr, isogclr, moco, mocov3, simclr, triplet  # noqa: F401  (contrastive)
from ssljax.objectives import contrastive_clustering, densecl  # noqa: F401  (contrastive: clusters, dense)
from ssljax.objectives import barlow_twins, byol, directpred, dino, simsiam, vicreg  # noqa: F401  (non-contrastive)
from ssljax.objectives import mae, masked_contrastive, simmim  # noqa: F401  (masked image modeling)
from ssljax.objectives.base import (
    OBJECTIVES,
    Context,
    Forward,
    LossOutput,
    Objective,
    TwoViewObjective,
    create_objective,
    register,
)
from ssljax.objectives.ema import EMATwoViewObjective

__all__ = [
    'OBJECTIVES',
    'Context',
    'EMATwoViewObjective',
    'Forward',
    'LossOutput',
    'Objective',
    'TwoViewObjective',
    'create_objective',
    'register',
]
