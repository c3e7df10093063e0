"""VICReg (Bardes et al. 2022): invariance + variance + covariance terms, statistics over the global batch."""

from __future__ import annotations

import dataclasses

from ssljax.objectives import losses
from ssljax.objectives.base import TwoViewObjective, check_choice, register, require

VARIANCE_VIEWS = ('mean', 'sum')


@register
@dataclasses.dataclass(frozen=True)
class VICReg(TwoViewObjective):
    """VICReg: z = g(f(x)) with projector g = [Linear - BN - ReLU] x 2 - Linear; (losses.vicreg_loss)
        L = sim_coeff MSE(z_a, z_b) + std_coeff 1/2 sum_z mean_d relu(1 - sqrt(Var_d(z) + 1e-4))
            + cov_coeff sum_z sum_{i != j} Cov(z)_ij^2 / D            (Var, Cov unbiased)
    ``variance_views`` 'mean' (the default: the 1/2 above, the reference's ``std_loss``) or 'sum' (solo-learn's
    ``variance_loss`` adds the two views' terms: at the same std_coeff its variance weight is twice the reference's).

    BatchNorm: ``bn_per_view`` True (the reference's ``forward(x, y)`` runs backbone and projector on each view
    separately, as solo-learn does); False concatenates the views.

    Defaults (the config keys): the paper's ImageNet setting (facebookresearch/vicreg main_vicreg.py): projector
    8192-8192-8192 with BN, sim_coeff 25, std_coeff 25, cov_coeff 1, variance_views 'mean', bn_per_view True.
    Metrics: ``invariance``, ``variance``, ``covariance`` (unweighted terms).
    """

    name = 'vicreg'
    projector_hidden: tuple = (8192, 8192)
    projector_dim: int = 8192
    sim_coeff: float = 25.0
    std_coeff: float = 25.0
    cov_coeff: float = 1.0
    variance_views: str = 'mean'
    bn_per_view: bool = True

    @classmethod
    def check_config(cls, config, num_devices: int) -> None:
        v = cls.config_values(config)
        for key in ('sim_coeff', 'std_coeff', 'cov_coeff'):
            require(v[key] >= 0, key, f'must be >= 0, got {v[key]}')
        require(
            v['sim_coeff'] + v['std_coeff'] + v['cov_coeff'] > 0,
            'sim_coeff',
            'and objective.std_coeff, objective.cov_coeff are all 0: nothing to learn',
        )
        check_choice(v, 'variance_views', VARIANCE_VIEWS)

    def pair_loss(self, z_a, z_b):
        return losses.vicreg_loss(
            z_a, z_b, self.sim_coeff, self.std_coeff, self.cov_coeff, variance_views=self.variance_views
        )
