"""Objectives: importing this package registers every method in ``base.OBJECTIVES``."""
from ssljax.objectives import contrastive, noncontrastive  # noqa: F401  (registration side effect)
from ssljax.objectives.base import OBJECTIVES, Context, Forward, LossOutput, Objective, create_objective, register

__all__ = ['OBJECTIVES', 'Context', 'Forward', 'LossOutput', 'Objective', 'create_objective', 'register']
