"""DenseCL (Wang et al., CVPR 2021): MoCo v2 plus a dense contrastive branch on the backbone's feature map.

Its own momentum encoder and two FIFO queues; the per-group ("per-GPU") BatchNorm with shuffled keys is MoCo v2's
(``base.grouped_forward``).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from ssljax.config_lib import ConfigError
from ssljax.objectives import losses
from ssljax.objectives.base import (
    Forward,
    LossOutput,
    Objective,
    ema_network,
    grouped_forward,
    init_heads,
    register,
    require,
)


@register
@dataclasses.dataclass(frozen=True)
class DenseCL(Objective):
    """DenseCL: L = (1 - lambda) L_global + lambda L_dense, lambda 0.5.

    Query encoder f_q with heads g (pooled features: Linear - ReLU - Linear) and d (each feature-map cell: 1x1 conv -
    ReLU - 1x1 conv, i.e. the same MLP per cell); key encoder and heads are EMAs (m 0.999) without gradient. Query
    view a, key view b of N images:
        L_global = InfoNCE(n(g(pool f_q(a))), n(g'(pool f_k(b))), queue Q)             (losses.densecl_global_loss)
        L_dense  = mean over the N S query cells of InfoNCE(r_ns, t_{n, m(n,s)}, queue Q2)  (losses.densecl_dense_loss)
    with r = n(d(f_q(a))), t = n(d'(f_k(b))) per cell, and the positive cell m(n, s) = argmax_t cos(f_q(a)_ns,
    f_k(b)_nt) chosen by backbone-feature similarity. After the loss, n(g'(.)) of the batch enters Q and the
    cell mean of d'(f_k(b)), normalised, enters Q2 (FIFO, the global batch at once; queue_size a multiple of it).
    BatchNorm as MoCo v2: ``bn_groups`` G groups of N / G images normalised separately (per-GPU BN, G = 8 GPUs in
    the reference; the same on any device count), the keys computed on a random permutation of the batch and
    un-shuffled (shuffled BN); G = 1 is global BN, G = 0 one group per device. Paper and code (WXinlong/DenseCL)
    agree; the code's DenseCLWarmupHook (lambda 0 for the first iterations) is used by none of its configs and is
    not implemented. Needs a backbone with a feature map (ResNet).
    Defaults (the config keys): the reference's ImageNet config (WXinlong/DenseCL densecl_imagenet_200ep.py):
    temperature 0.2, queue_size 65536, momentum 0.999, loss_lambda 0.5, bn_groups 8 (its 8 GPUs), necks
    2048-128 without BN (projector_hidden (2048,), projector_dim 128, projector_bn False, and the same dense_*).
    ``projector_last_bn`` / ``dense_projector_last_bn`` (False: the reference) end a neck with BatchNorm without
    affine, centring its outputs per batch (over images, and cells for the dense neck): MoCo v2's guard against the
    queue's common-mode collapse (moco.py).
    """

    name = 'densecl'
    temperature: float = 0.2
    queue_size: int = 65536
    momentum: float = 0.999
    loss_lambda: float = 0.5
    bn_groups: int = 8
    projector_hidden: tuple = (2048,)
    projector_dim: int = 128
    projector_bn: bool = False
    projector_last_bn: bool = False
    dense_projector_hidden: tuple = (2048,)
    dense_projector_dim: int = 128
    dense_projector_bn: bool = False
    dense_projector_last_bn: bool = False

    @classmethod
    def check_config(cls, config, num_devices: int) -> None:
        v = cls.config_values(config)
        batch = int(config.batch_size)
        groups = v['bn_groups'] or num_devices
        require(v['temperature'] > 0, 'temperature', f'must be > 0, got {v["temperature"]!r}')
        require(
            v['queue_size'] >= 1 and v['queue_size'] % batch == 0,
            'queue_size',
            f'must be a positive multiple of the global batch_size ({batch}), got {v["queue_size"]!r}',
        )
        require(0 <= v['momentum'] <= 1, 'momentum', f'must be in [0, 1], got {v["momentum"]!r}')
        require(0 <= v['loss_lambda'] <= 1, 'loss_lambda', f'must be in [0, 1], got {v["loss_lambda"]!r}')
        require(
            v['bn_groups'] >= 0 and batch % groups == 0,
            'bn_groups',
            f'must be 0 (one per device) or >= 1, and its groups ({groups}) must divide the global batch_size '
            f'({batch}), got {v["bn_groups"]!r}',
        )
        if str(config.model.backbone).startswith('vit'):
            raise ConfigError(
                f'config key "model.backbone": densecl needs a backbone with a feature map (a ResNet), '
                f'got {config.model.backbone!r}'
            )

    @property
    def groups(self) -> int:
        """BatchNorm groups: bn_groups, or one per device when 0."""
        return self.bn_groups or self.ctx.num_devices

    @property
    def projector(self):
        return self.mlp('projector', last_bn=self.projector_last_bn, last_bn_affine=False)

    @property
    def dense_projector(self):
        return self.mlp('dense_projector', last_bn=self.dense_projector_last_bn, last_bn_affine=False)

    def init(self, rng, encoder_variables):
        feats = jnp.zeros((2, self.ctx.feature_dim))
        heads = init_heads(
            rng, {'projector': (self.projector, (feats,)), 'dense_projector': (self.dense_projector, (feats,))}
        )
        target = jax.tree.map(
            jnp.copy,
            {
                'params': {'encoder': encoder_variables['params'], **heads['params']},
                'batch_stats': {'encoder': encoder_variables.get('batch_stats', {}), **heads['batch_stats']},
            },
        )
        key_global, key_dense = jax.random.split(jax.random.fold_in(rng, 7))
        queue = lambda key, dim: losses.l2_normalize(jax.random.normal(key, (self.queue_size, dim)))  # noqa: E731
        return heads, {
            'target': target,
            'queue': queue(key_global, self.projector.out_dim),
            'queue_dense': queue(key_dense, self.dense_projector.out_dim),
            'ptr': jnp.zeros((), jnp.int32),
        }

    def _branches(self, network: dict, x: jax.Array) -> tuple:
        """-> (pooled projection [N, D], dense projections [N, S, D], backbone cells [N, S, C], pooled features,
        new batch_stats) of one network {'params', 'batch_stats'} on x: the encoder in ``bn_groups`` BatchNorm
        groups (``base.grouped_forward``), the heads on the whole batch."""
        out, stats = grouped_forward(
            network, self.groups, x, lambda fw, chunk: fw.apply('encoder', self.ctx.encoder, chunk)
        )
        if 'feature_map' not in out:
            raise ConfigError('config key "model.backbone": densecl needs a backbone with a feature map')
        fmap = out['feature_map']
        n, c = fmap.shape[0], fmap.shape[-1]
        heads = Forward(dict(network, batch_stats=stats))
        z = heads.apply('projector', self.projector, out['pooled'])
        grid = heads.apply('dense_projector', self.dense_projector, fmap)
        return z, grid.reshape(n, -1, grid.shape[-1]), fmap.reshape(n, -1, c), out['pooled'], heads.batch_stats

    def loss(self, variables, objective_state, views, batch, rng):
        q, q_grid, q_cells, feats, stats = self._branches(variables, views[0])
        target = objective_state['target']
        perm = jax.random.permutation(rng, views[1].shape[0])  # shuffled BN: keys grouped in a random order
        k, k_grid, k_cells, _, target_stats = jax.tree.map(
            jax.lax.stop_gradient, self._branches(target, views[1][perm])
        )
        unshuffle = jnp.argsort(perm)
        k, k_grid, k_cells = k[unshuffle], k_grid[unshuffle], k_cells[unshuffle]
        loss_global = losses.densecl_global_loss(q, k, objective_state['queue'], self.temperature)
        loss_dense = losses.densecl_dense_loss(
            q_grid, k_grid, q_cells, k_cells, objective_state['queue_dense'], self.temperature
        )
        loss = (1.0 - self.loss_lambda) * loss_global + self.loss_lambda * loss_dense
        ptr = objective_state['ptr']
        enqueue = lambda queue, keys: jax.lax.dynamic_update_slice(  # noqa: E731
            queue, losses.l2_normalize(keys).astype(queue.dtype), (ptr, 0)
        )
        state = {
            'target': dict(target, batch_stats=target_stats),
            'queue': enqueue(objective_state['queue'], k),
            'queue_dense': enqueue(objective_state['queue_dense'], k_grid.mean(axis=1)),
            'ptr': (ptr + k.shape[0]) % self.queue_size,
        }
        metrics = {'loss_global': loss_global, 'loss_dense': loss_dense}
        return loss, LossOutput(metrics, stats, state, feats)

    def update(self, params, objective_state, step):
        return params, dict(objective_state, target=ema_network(objective_state['target'], params, self.momentum))
