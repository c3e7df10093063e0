"""MoCo v2 (queue, momentum encoder, shuffled BatchNorm) and MoCHi (hard negative mixing on MoCo v2).

The key / momentum network lives in the objective state as ``'target'`` (so evaluators can score it with
``network='target'``; the online / query encoder is the default), its parameters follow the online ones by EMA in
``update``, its BatchNorm running statistics come from its own forward passes (the references' momentum update covers
parameters only). MoCo v3 (no queue, a predictor) is in mocov3.py.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import jax
import jax.numpy as jnp

from ssljax.config_lib import scale_setting
from ssljax.objectives import losses
from ssljax.objectives.base import (
    AXIS,
    BATCH,
    REPLICATED,
    Forward,
    LossOutput,
    Objective,
    check_temperature,
    ema_network,
    grouped_forward,
    init_heads,
    register,
    require,
    steps_per_epoch,
)
from ssljax.objectives.ema import ema_copy, ema_momentum_at


def key_drift_metrics(queries: jax.Array, keys: jax.Array, queue: jax.Array) -> dict:
    """How much the unit-norm queries [B, D], keys [B, D] and the queue [K, D] (before this batch's enqueue) share one
    direction: the common-mode collapse that stopped MoCo v2 on the embedded budget (experiments/contrastive/README.md).

    ``query_mean_norm`` = ||mean_i q_i|| (0 for vectors spread evenly, 1 when every image maps to the same direction;
    its square is the mean pairwise cosine, i = j included), ``key_mean_norm`` and ``queue_mean_norm`` the same for
    the keys and the queue, and ``key_queue_drift`` = ||mean_i k_i - mean_m Q_m||: the part of every query's gradient
    -(k_i - sum_m p_im Q_m) / tau that is the same for all queries when the queue's keys come from older key encoders.
    """
    return {
        'query_mean_norm': jnp.linalg.norm(jnp.mean(queries, axis=0)),
        'key_mean_norm': jnp.linalg.norm(jnp.mean(keys, axis=0)),
        'queue_mean_norm': jnp.linalg.norm(jnp.mean(queue, axis=0)),
        'key_queue_drift': jnp.linalg.norm(jnp.mean(keys, axis=0) - jnp.mean(queue, axis=0)),
    }


@register
@dataclasses.dataclass(frozen=True)
class MoCoV2(Objective):
    """MoCo v2 (Chen et al. 2020; He et al. 2020): InfoNCE of a query against its key and a FIFO queue of old keys.

    Query q = n(g(f(x_q))), key k = n(g'(f'(x_k))) from the momentum (key) encoder f', g' (stop-gradient); the queue
    Q [K, D] holds the keys of the last K / B global batches. With tau the temperature (losses.moco_infonce):
        L = mean_i -log( exp(q_i.k_i / tau) / (exp(q_i.k_i / tau) + sum_{m<K} exp(q_i.Q_m / tau)) )
    then the global batch's keys replace the oldest B rows of Q (K must be a multiple of B, as the reference asserts),
    and after the optimizer step xi <- m xi + (1 - m) theta (m from ema_base to ema_final on BYOL's cosine at the
    step count before the update; ema_base = ema_final = 0.999 is the paper's constant momentum).

    Shuffled BatchNorm (reference: moco/builder.py, BN per GPU without SyncBN): the global batch is cut into
    ``bn_groups`` consecutive groups (0: one per device) and BatchNorm normalises each with its own statistics;
    the query encoder sees its groups in batch order, the key encoder the key views permuted by a random permutation
    of the global batch (drawn from the step's key, undone after), so a query and its key never share statistics.
    Each device runs its bn_groups / n_devices groups through ``ctx.per_device`` (no cross-device BatchNorm); the
    running statistics are the mean of the groups' updates. bn_groups = 1 is plain global BatchNorm without shuffling
    (solo-learn's single-GPU CIFAR runs). So for a fixed bn_groups the loss and the parameters do not depend on the
    device count, and bn_groups = 0 on n devices equals bn_groups = n on one.

    ``symmetric`` False (the paper): queries from view 1, keys from view 2. True (solo-learn's MoCo v2+): also the
    reverse pair, with a second queue, loss averaged over the two. Projector: Linear - ReLU - Linear (no BN, the
    reference's ``--mlp``). The queue starts as random unit vectors, as the reference's.

    ``projector_last_bn`` False (the paper): True ends the projector with BatchNorm without scale and bias (MoCo v3's
    and SimCLR v2's heads end so), which centres each batch's projections. Without it a fast optimizer can collapse
    every query onto one direction: the queue's keys come from older key encoders, so their mean differs from the
    current keys' and every query's gradient -(k_i - sum_m p_im Q_m) / tau carries the same component, which the
    head's shared (bias-like) directions absorb and the EMA hands to the keys (the embedded budget at lr 0.3:
    ``query_mean_norm`` 0.999 by step 20, the loss at ln(K + 1); experiments/contrastive/README.md). Logged:
    ``query_mean_norm``, ``key_mean_norm``, ``queue_mean_norm``, ``key_queue_drift`` (:func:`key_drift_metrics`).
    Defaults (the config keys): the paper's ImageNet setting (facebookresearch/moco main_moco.py with --mlp
    --moco-t 0.2): temperature 0.2, queue_size 65536, projector Linear(d, 2048) - ReLU - Linear(128) (projector_bn
    and projector_last_bn False), constant momentum 0.999 (ema_base = ema_final), bn_groups 0 (per-GPU BatchNorm: one
    group per device), symmetric False. State: target, queue [V, K, D], queue_ptr, step.
    """

    name = 'mocov2'
    temperature: float = 0.2
    queue_size: int = 65536
    projector_hidden: tuple = (2048,)
    projector_dim: int = 128
    projector_bn: bool = False
    projector_last_bn: bool = False
    ema_base: float = 0.999
    ema_final: float = 0.999
    bn_groups: int = 0
    symmetric: bool = False

    @classmethod
    def check_config(cls, config, num_devices: int) -> None:
        v = cls.config_values(config)
        batch, queue_size, groups = int(config.batch_size), v['queue_size'], v['bn_groups']
        check_temperature(v)
        require(
            queue_size >= 1 and queue_size % batch == 0,
            'queue_size',
            f'({queue_size}) must be a positive multiple of the global batch (batch_size = {batch}), e.g. '
            f'{max(1, queue_size // batch) * batch}',
        )
        require(groups >= 0, 'bn_groups', f'must be >= 0 (0: one per device), got {groups}')
        require(
            groups <= 1 or groups % num_devices == 0,
            'bn_groups',
            f'({groups}) must be 0, 1 or a multiple of the number of devices ({num_devices})',
        )
        require(
            batch % max(groups or num_devices, 1) == 0,
            'bn_groups',
            f'({groups or num_devices} groups) does not split batch_size {batch} into equal BatchNorm groups',
        )
        accumulating = int(scale_setting(config, 'grad_accum_steps')) > 1
        require(
            not (
                accumulating
                and scale_setting(config, 'grad_accum_mode') == 'exact'
                and v['projector_last_bn']
                and (groups or num_devices) > 1
            ),
            'projector_last_bn',
            'with exact gradient accumulation needs bn_groups 1: the one-batch step normalises the head per '
            "shuffled BatchNorm group, accumulation's head sees the whole batch",
        )

    @property
    def projector(self):
        return self.mlp('projector', last_bn=self.projector_last_bn, last_bn_affine=False)

    @property
    def num_queries(self) -> int:
        return 2 if self.symmetric else 1

    def init(self, rng, encoder_variables):
        head_key, queue_key = jax.random.split(rng)
        feats = jnp.zeros((2, self.ctx.feature_dim), jnp.float32)
        heads = init_heads(head_key, {'projector': (self.projector, (feats,))})
        queue = jax.random.normal(queue_key, (self.num_queries, self.queue_size, self.projector.out_dim), jnp.float32)
        state = {
            'target': ema_copy(encoder_variables, heads, ('projector',)),
            'queue': losses.l2_normalize(queue),
            'queue_ptr': jnp.zeros((), jnp.int32),
            'step': jnp.zeros((), jnp.int32),
        }
        return heads, state

    def _embed(self, fw: Forward, x: jax.Array):
        feats = fw.apply('encoder', self.ctx.encoder, x)['pooled']
        return fw.apply('projector', self.projector, feats), feats

    def _forward_views(self, variables, xs, n_groups):
        """Each view through the network in ``n_groups`` BatchNorm groups, running statistics chained view by view."""
        zs, feats = [], []
        for x in xs:
            (z, f), stats = grouped_forward(variables, n_groups, x, self._embed)
            variables = dict(variables, batch_stats=stats)
            zs.append(z)
            feats.append(f)
        return zs, feats, variables['batch_stats']

    @property
    def global_groups(self) -> bool:
        """Whether the BatchNorm groups run as one global vmapped forward instead of per device (fsdp meshes)."""
        return self.ctx.mesh is not None and dict(self.ctx.mesh.shape).get('fsdp', 1) > 1

    def encode(self, variables, target, xq, xk, rng):
        """-> (queries [V][B, D], probe features [B, F], keys [V][B, D], online stats, target stats)."""
        groups = self.bn_groups or self.ctx.num_devices
        if groups == 1:  # one BatchNorm group: the global batch, nothing to shuffle
            q, f, stats = self._forward_views(variables, xq, 1)
            k, _, target_stats = self._forward_views(target, xk, 1)
            return q, f[0], [jax.lax.stop_gradient(x) for x in k], stats, target_stats
        perms = [jax.random.permutation(key, xk[0].shape[0]) for key in jax.random.split(rng, len(xk))]
        shuffled = [x[p] for x, p in zip(xk, perms)]
        if self.global_groups:
            # fsdp-sharded parameters: the same groups as one global vmapped forward, which XLA partitions over the
            # devices (each weight gathered as its layer runs). A shard_map here would take the parameters with
            # REPLICATED in_specs and so gather the whole online and key networks onto every device at its boundary
            # (measured: docs/scaling-mesh.md). Equal to the per-device path up to the order of the statistics' mean.
            q, f, stats = self._forward_views(variables, xq, groups)
            k, _, target_stats = self._forward_views(target, shuffled, groups)
            k = [jax.lax.stop_gradient(x[jnp.argsort(p)]) for x, p in zip(k, perms)]
            return q, f[0], k, stats, target_stats
        local_groups = groups // self.ctx.num_devices

        def local(online, key_net, xq_local, xk_local):
            q, f, stats = self._forward_views(online, xq_local, local_groups)
            k, _, target_stats = self._forward_views(key_net, xk_local, local_groups)
            return q, f[0], k, jax.lax.pmean(stats, AXIS), jax.lax.pmean(target_stats, AXIS)

        run = self.ctx.per_device(
            local,
            in_specs=(REPLICATED, REPLICATED, BATCH, BATCH),
            out_specs=(BATCH, BATCH, BATCH, REPLICATED, REPLICATED),
        )
        q, f, k, stats, target_stats = run(variables, target, list(xq), shuffled)
        k = [jax.lax.stop_gradient(x[jnp.argsort(p)]) for x, p in zip(k, perms)]
        return q, f, k, stats, target_stats

    def query_loss(self, rng, q, k, queue, step):
        """-> (InfoNCE of queries q against keys k and the queue, metrics); MoCHi adds its synthetic negatives."""
        return losses.moco_infonce(q, k, queue, self.temperature), {}

    def loss(self, variables, objective_state, views, batch, rng):
        shuffle_key, mix_key = jax.random.split(rng)
        xq = list(views[: self.num_queries])
        xk = [views[1], views[0]][: self.num_queries]  # query v's positive key is the other view
        target = objective_state['target']
        q, feats, k, stats, target_stats = self.encode(variables, target, xq, xk, shuffle_key)
        return self._loss_from(q, feats, k, stats, target_stats, objective_state, mix_key)

    # Gradient accumulation (a BatchNorm-free encoder: no groups, nothing to shuffle): the query and key encoders per
    # micro-batch; projectors, InfoNCE against the queue and the queue's update on the whole batch.
    accumulation: ClassVar[str] = 'split'

    def features(self, variables, objective_state, views, batch, rng):
        xq = list(views[: self.num_queries])
        xk = [views[1], views[0]][: self.num_queries]
        online = [Forward(variables).apply('encoder', self.ctx.encoder, x)['pooled'] for x in xq]
        target = Forward(objective_state['target'])
        fixed = [jax.lax.stop_gradient(target.apply('encoder', self.ctx.encoder, x)['pooled']) for x in xk]
        return online, fixed

    def head_loss(self, variables, objective_state, online, fixed, views, batch, rng):
        _, mix_key = jax.random.split(rng)
        fw, target = Forward(variables), Forward(objective_state['target'])
        q = [fw.apply('projector', self.projector, f) for f in online]
        k = [jax.lax.stop_gradient(target.apply('projector', self.projector, f)) for f in fixed]
        stats, target_stats = fw.batch_stats, jax.lax.stop_gradient(target.batch_stats)
        return self._loss_from(q, online[0], k, stats, target_stats, objective_state, mix_key)

    def _loss_from(self, q, feats, k, stats, target_stats, objective_state, mix_key):
        target = objective_state['target']
        queue, step = objective_state['queue'], objective_state['step']
        total, metrics = 0.0, {}
        for v in range(self.num_queries):
            value, extra_metrics = self.query_loss(jax.random.fold_in(mix_key, v), q[v], k[v], queue[v], step)
            total = total + value
            metrics.update(extra_metrics)
        loss = total / self.num_queries
        keys = jnp.stack([losses.l2_normalize(x) for x in k])  # [V, B, D], global batch order
        ptr = objective_state['queue_ptr']
        new_queue = jax.lax.dynamic_update_slice(queue, keys.astype(queue.dtype), (0, ptr, 0))
        metrics['pos_cosine'] = losses.cosine_similarity(q[0], k[0]).mean()
        metrics.update(key_drift_metrics(losses.l2_normalize(q[0]), keys[0], queue[0]))
        state = dict(
            objective_state,
            target=dict(target, batch_stats=jax.lax.stop_gradient(target_stats)),
            queue=new_queue,
            queue_ptr=(ptr + keys.shape[1]) % self.queue_size,
            step=step + 1,
        )
        return loss, LossOutput(metrics, stats, state, feats)

    def update(self, params, objective_state, step):
        momentum = ema_momentum_at(self.ema_base, step, self.ctx.total_steps, self.ema_final)
        return params, dict(objective_state, target=ema_network(objective_state['target'], params, momentum))


@register
@dataclasses.dataclass(frozen=True)
class MoCHi(MoCoV2):
    """MoCHi (Kalantidis et al. 2020): MoCo v2 plus synthetic hard negatives mixed from the queue's hardest.

    For each query q (normalised), let n_1..n_N be the N = ``n_hard`` queue keys most similar to q. Draw
    s = ``n_mix`` points h = n(alpha n_i + (1 - alpha) n_j), alpha ~ U(0, 1), and s' = ``n_mix_query`` points
    h' = n(beta q + (1 - beta) n_j), beta ~ U(0, 0.5), indices uniform over the N (losses.mochi_negatives); they are
    detached (no gradient through them) and appended to q's negatives in the MoCo v2 loss:
        L = mean_i -log( e^{q.k/tau} / (e^{q.k/tau} + sum_Q e^{q.n/tau} + sum_{h, h'} e^{q.h/tau}) ).
    Mixing starts after ``mix_start_steps`` losses (>= 0), else after ``mix_start_epochs`` epochs (a warm-up, as
    the paper); before that the loss is exactly MoCo v2's (``lax.cond``). The official code was not released; this
    follows the paper's equations. Everything else is MoCo v2 (shuffled BatchNorm, queue, momentum), and the draws
    are made on the global batch, so 1 and n devices agree as for MoCo v2.
    Defaults: MoCo v2's plus the paper's typical (N, s, s') = (n_hard, n_mix, n_mix_query) = (1024, 1024, 128)
    (n_hard <= queue_size); mix_start_epochs 10 (ours: the paper warms up without mixing, its count is not fixed
    here), mix_start_steps -1 (>= 0 wins over the epochs).
    Metric: ``mixing`` (1 once the synthetic negatives are in use).
    """

    name = 'mochi'
    n_hard: int = 1024
    n_mix: int = 1024
    n_mix_query: int = 128
    mix_start_epochs: float = 10.0
    mix_start_steps: int = -1

    @classmethod
    def check_config(cls, config, num_devices: int) -> None:
        super().check_config(config, num_devices)
        v = cls.config_values(config)
        require(
            1 <= v['n_hard'] <= v['queue_size'],
            'n_hard',
            f'({v["n_hard"]}) must be between 1 and the queue size (objective.queue_size = {v["queue_size"]})',
        )
        for key in ('n_mix', 'n_mix_query', 'mix_start_epochs'):
            require(v[key] >= 0, key, f'must be >= 0, got {v[key]}')

    @property
    def mix_start(self) -> int:
        """Losses computed before mixing starts: mix_start_steps when >= 0, else mix_start_epochs in steps."""
        if self.mix_start_steps >= 0:
            return self.mix_start_steps
        return int(round(self.mix_start_epochs * steps_per_epoch(self.ctx)))

    def query_loss(self, rng, q, k, queue, step):
        if self.n_mix + self.n_mix_query == 0:
            return super().query_loss(rng, q, k, queue, step)
        active = step >= self.mix_start

        def mixed():
            synthetic = losses.mochi_negatives(rng, q, queue, self.n_hard, self.n_mix, self.n_mix_query)
            return losses.moco_infonce(q, k, queue, self.temperature, synthetic)

        value = jax.lax.cond(active, mixed, lambda: losses.moco_infonce(q, k, queue, self.temperature))
        return value, {'mixing': active.astype(jnp.float32)}
