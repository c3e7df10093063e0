"""A method written outside the package against the Engine v2 contract (used by tests/test_contract.py).

Nothing here is imported by ssljax: it registers an objective, a sampler and an evaluator the way a user's notebook
or project would, and the generic loop trains them unchanged.
- ``toy_per_device_bn``: SimCLR whose encoder and projector run per device through ``ctx.per_device`` (BatchNorm
  statistics of each device's shard, as MoCo's shuffled BN needs), with NT-Xent over the global batch and a
  per-sample table (how often each image was drawn) sharded over the devices.
- ``toy_balanced``: a stateful sampler; every 2 steps it re-labels the training set by the sign of the current
  encoder's first feature dimension and draws half of each batch from each label.
- ``toy_feature_norm``: an evaluator returning the mean feature norm of the test split.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from ssljax.data import samplers
from ssljax.evaluation import Evaluator, register_evaluator
from ssljax.objectives import base, losses
from ssljax.objectives.base import AXIS, BATCH, REPLICATED, Forward, LossOutput, Objective


@base.register
@dataclasses.dataclass(frozen=True)
class PerDeviceBNSimCLR(Objective):
    name = 'toy_per_device_bn'
    projector: object = None
    temperature: float = 0.2

    @classmethod
    def from_config(cls, config, ctx):
        return cls(ctx=ctx, projector=base.mlp_from_config(config.objective, 'projector', ctx.dtype),
                   temperature=config.objective.temperature)

    def init(self, rng, encoder_variables):
        heads = base.init_heads(rng, {'projector': (self.projector, (jnp.zeros((2, self.ctx.feature_dim)),))})
        return heads, {'seen': jnp.zeros((self.ctx.per_sample_rows,), jnp.int32)}

    def state_partition(self, objective_state):
        return {'seen': BATCH}

    def loss(self, variables, objective_state, views, batch, rng):
        def local(params, batch_stats, view_a, view_b):
            fw = Forward({'params': params, 'batch_stats': batch_stats})
            feats = [o['pooled'] for o in fw.encode(self.ctx.encoder, [view_a, view_b])]
            z_a, z_b = fw.apply_views('projector', self.projector, feats)
            return z_a, z_b, feats[0], jax.lax.pmean(fw.batch_stats, AXIS)

        per_device = self.ctx.per_device(local, in_specs=(REPLICATED, REPLICATED, BATCH, BATCH),
                                         out_specs=(BATCH, BATCH, BATCH, REPLICATED))
        z_a, z_b, feats, stats = per_device(variables['params'], variables['batch_stats'], views[0], views[1])
        loss = losses.nt_xent(z_a, z_b, self.temperature)  # negatives from every device
        seen = objective_state['seen'].at[batch['index']].add(1)
        return loss, LossOutput({'seen_total': jnp.sum(seen)}, stats, {'seen': seen}, feats)


@samplers.register_sampler
class BalancedByPseudoLabel(samplers.Sampler):
    name = 'toy_balanced'

    def init_state(self):
        return {'pseudo': (np.arange(self.num_examples) % 2).astype(np.int32)}

    def refresh_steps(self, step):
        return step > 0 and step % 2 == 0

    def refresh(self, step, state, tools):
        feats = tools.train_features('')
        return {'pseudo': (feats[:, 0] > np.median(feats[:, 0])).astype(np.int32)}

    def indices(self, step, state):
        rng = np.random.default_rng([self.seed, step])
        half = self.global_batch // 2
        groups = [np.flatnonzero(state['pseudo'] == g) for g in (0, 1)]
        groups = [g if len(g) >= half else np.arange(self.num_examples) for g in groups]
        return np.concatenate([rng.choice(g, half, replace=False) for g in groups]).astype(np.int64)


@register_evaluator
class FeatureNorm(Evaluator):
    type = 'toy_feature_norm'

    def run(self, state, step):
        feats = self.features(state, 'test').host()  # float32 [N, D] of the test split
        return {'mean_norm': float(np.linalg.norm(feats, axis=1).mean())}
