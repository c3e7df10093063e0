"""iSogCLR: contrastive learning with an individual temperature per training image (Qiu et al., ICML 2023).

The objective keeps three per-sample tables indexed by ``batch['index']`` in its state, sharded over the devices, and
an evaluator (``isogclr_tau``) that summarises and plots the temperatures of the whole training set.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np

from ssljax.config_lib import ConfigError
from ssljax.evaluation import Evaluator, register_evaluator
from ssljax.evaluation.context import to_host
from ssljax.models.heads import MLP
from ssljax.objectives import losses
from ssljax.objectives.base import BATCH, Forward, LossOutput, Objective, init_heads, register

VARIANTS = ('paper', 'code')
TABLES = ('s', 'tau', 'u')


@register
@dataclasses.dataclass(frozen=True)
class ISogCLR(Objective):
    """iSogCLR: SogCLR's moving-average contrastive estimator with a learned temperature tau_i per image.

    Robust global contrastive objective, with h_i(z) = s(x_i, z) - s(x_i, x_i+) over the negatives z of anchor i:
        min_w max_tau (1/n) sum_i [ tau_i log E_z exp(h_i(z) / tau_i) + rho tau_i ],   tau_i in [tau_min, tau_max]
    Per step, for the batch's images (``losses.isogclr_loss`` has the exact formulas): a moving estimate
    s_i <- (1 - gamma) s_i + gamma g_i of the inner mean g_i (s_i = g_i at an image's first visit, as both released
    codes do), the model loss with stop-gradient weights exp(h / tau_i) / s_i, a momentum estimate u_i of
    d/dtau_i = log s_i + rho - mean_z w (h / tau_i), clipped to [-3, 3], and tau_i <- clip(tau_i - eta u_i).
    ``variant`` 'paper' (default) puts h_i in the exponent as the paper's objective; 'code' puts s(x_i, z) there and
    subtracts the positive outside (zhqiu/contrastive-learning-iSogCLR SogCLR_DRO_Loss, LibAUC GCLoss_v1); both
    agree when gamma = 1. Tables s, tau, u: float32 [ctx.per_sample_rows], declared sharded (BATCH).
    Metrics: tau_mean / tau_min / tau_max of the batch's temperatures (before the update), grad_tau (mean d_i).
    Defaults (the config keys): the reference's unimodal CIFAR recipe (zhqiu/contrastive-learning-iSogCLR
    unimodal_exps): temperature (tau_init) 0.1, temperature_min 0.05, temperature_max 1.0, gamma 0.8, dro_rho 0.4,
    eta 0.03, beta_u 0.5, tau_grad_clip 3.0, variant 'paper', its projector 8192-8192-8192 with BN
    (projector_hidden (8192, 8192), projector_dim 8192), the two views concatenated (bn_per_view False).
    """

    name = 'isogclr'
    projector_hidden: tuple = (8192, 8192)
    projector_dim: int = 8192
    projector_bn: bool = True
    temperature: float = 0.1
    temperature_min: float = 0.05
    temperature_max: float = 1.0
    gamma: float = 0.8
    dro_rho: float = 0.4
    eta: float = 0.03
    beta_u: float = 0.5
    tau_grad_clip: float = 3.0
    variant: str = 'paper'
    bn_per_view: bool = False

    @classmethod
    def check_config(cls, config, num_devices: int) -> None:
        cfg = cls.config_values(config)
        lo, hi, init = cfg['temperature_min'], cfg['temperature_max'], cfg['temperature']
        checks = [
            ('variant', cfg['variant'] in VARIANTS, f'must be one of {", ".join(VARIANTS)}'),
            ('temperature_min', lo >= 0.025, 'must be >= 0.025 (exp(2 / tau) must stay finite in float32)'),
            ('temperature_max', hi >= lo, f'must be >= objective.temperature_min ({lo})'),
            (
                'temperature',
                lo <= init <= hi,
                f'(the initial tau) must lie in [temperature_min, temperature_max] = [{lo}, {hi}]',
            ),
            ('gamma', 0 < cfg['gamma'] <= 1, 'must be in (0, 1]'),
            ('beta_u', 0 < cfg['beta_u'] <= 1, 'must be in (0, 1]'),
            ('eta', cfg['eta'] >= 0, 'must be >= 0'),
            ('tau_grad_clip', cfg['tau_grad_clip'] > 0, 'must be > 0'),
        ]
        for key, ok, message in checks:
            if not ok:
                raise ConfigError(f'config key "objective.{key}" {message}, got {cfg[key]!r}')
        if config.batch_size < 2:
            raise ConfigError(
                f'config key "batch_size": isogclr needs at least 2 images per batch, got {config.batch_size}'
            )

    @property
    def projector(self) -> MLP:
        return self.mlp('projector')

    def init(self, rng, encoder_variables):
        heads = init_heads(rng, {'projector': (self.projector, (jnp.zeros((2, self.ctx.feature_dim)),))})
        rows = self.ctx.per_sample_rows
        return heads, {
            's': jnp.zeros((rows,), jnp.float32),
            'tau': jnp.full((rows,), self.temperature, jnp.float32),
            'u': jnp.zeros((rows,), jnp.float32),
        }

    def state_partition(self, objective_state):
        return {name: BATCH for name in TABLES}

    def loss(self, variables, objective_state, views, batch, rng):
        fw = Forward(variables, bn_per_view=self.bn_per_view)
        feats = [o['pooled'] for o in fw.encode(self.ctx.encoder, views[:2])]
        z_a, z_b = fw.apply_views('projector', self.projector, feats)
        index = batch['index']
        rows = {name: objective_state[name][index] for name in TABLES}
        loss, new = losses.isogclr_loss(
            z_a,
            z_b,
            rows['tau'],
            rows['s'],
            rows['u'],
            gamma=self.gamma,
            rho=self.dro_rho,
            eta=self.eta,
            beta_u=self.beta_u,
            tau_min=self.temperature_min,
            tau_max=self.temperature_max,
            grad_clip=self.tau_grad_clip,
            variant=self.variant,
        )
        state = {name: objective_state[name].at[index].set(new[name]) for name in TABLES}
        tau = rows['tau']
        metrics = {
            'tau_mean': tau.mean(),
            'tau_min': tau.min(),
            'tau_max': tau.max(),
            'grad_tau': new['grad_tau'].mean(),
        }
        return loss, LossOutput(metrics, fw.batch_stats, state, feats[0])


@register_evaluator
class TemperatureHistogram(Evaluator):
    """iSogCLR's learned temperatures tau_i of every training image: mean, std, min, max, the fraction of images
    visited so far (s_i > 0), and their histogram drawn to ``workdir/figures/<name>_tau_<step>.png``."""

    type = 'isogclr_tau'
    defaults = dict(bins=40)

    @classmethod
    def check(cls, settings):
        return None if settings.bins >= 1 else ('bins', f'must be >= 1, got {settings.bins}')

    def run(self, state, step):
        table = state.objective_state
        if not isinstance(table, dict) or 'tau' not in table or 's' not in table:
            raise ConfigError(
                f'config key "evals.{self.name}": evaluator isogclr_tau needs the isogclr objective '
                f'(per-sample tables s, tau), not {self.ctx.config.method!r}'
            )
        n = self.ctx.objective.ctx.num_examples
        tau = to_host(table['tau'])[:n].astype(np.float64)
        visited = to_host(table['s'])[:n] > 0
        self._plot(tau, visited, step)
        return {
            'mean': float(tau.mean()),
            'std': float(tau.std()),
            'min': float(tau.min()),
            'max': float(tau.max()),
            'visited': float(visited.mean()),
        }

    def _plot(self, tau, visited, step):
        path = self.figure_path('tau', step)
        if path is None:
            return
        from matplotlib.figure import Figure  # not pyplot: a notebook's backend stays as it is

        fig = Figure(figsize=(5, 3.5))
        ax = fig.subplots()
        edges = np.linspace(tau.min(), max(tau.max(), tau.min() + 1e-6), self.settings.bins + 1)
        ax.hist(tau, bins=edges, color='tab:blue', alpha=0.5, label=f'all ({tau.size})')
        ax.hist(tau[visited], bins=edges, histtype='step', color='tab:red', label=f'visited ({int(visited.sum())})')
        ax.set_xlabel('temperature tau_i')
        ax.set_ylabel('training images')
        ax.set_yscale('log')
        ax.set_title(f'{self.name}: iSogCLR temperatures at step {step} (mean {tau.mean():.3f})', fontsize=9)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(path, dpi=100)
