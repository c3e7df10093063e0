"""Objectives: importing this package registers every method in ``base.OBJECTIVES``."""
from ssljax.objectives import contrastive, noncontrastive  # noqa: F401  (registration side effect)
from ssljax.objectives import dcl, moco, triplet  # noqa: F401  (contrastive family A)
from ssljax.objectives import contrastive_clustering, densecl, gsimclr, isogclr  # noqa: F401  (contrastive family B)
from ssljax.objectives import mae, masked_contrastive, simmim  # noqa: F401  (masked image modeling)
from ssljax.objectives.base import OBJECTIVES, Context, Forward, LossOutput, Objective, create_objective, register

__all__ = ['OBJECTIVES', 'Context', 'Forward', 'LossOutput', 'Objective', 'create_objective', 'register']
