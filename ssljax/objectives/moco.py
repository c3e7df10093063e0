"""MoCo v2 (queue, momentum encoder, shuffled BatchNorm), MoCHi (hard negative mixing on MoCo v2) and MoCo v3.

Shared pieces: the key / momentum network lives in the objective state as ``'target'`` (so evaluators can score it
with ``network='target'``; the online / query encoder is the default), its parameters follow the online ones by EMA
in ``update``, its BatchNorm running statistics come from its own forward passes (the references' momentum update
covers parameters only).
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp

from ssljax.models.heads import MLP
from ssljax.objectives import losses
from ssljax.objectives.base import (AXIS, BATCH, REPLICATED, Context, Forward, LossOutput, Objective,
                                    cosine_ema_momentum, ema_network, init_heads, mlp_from_config, register)
from ssljax.objectives.noncontrastive import BYOL, _ema_copy, _steps_per_epoch, ema_momentum_at


def check_temperature(cfg, key: str = 'temperature') -> float:
    value = float(cfg[key])
    if not value > 0:
        raise ValueError(f'config key "objective.{key}" must be > 0, got {cfg[key]!r}')
    return value


def grouped_forward(variables: dict, n_groups: int, x: jax.Array, fn: Callable) -> tuple:
    """``fn(Forward, chunk)`` on ``n_groups`` consecutive equal chunks of ``x``, BatchNorm statistics per chunk.

    -> (fn's outputs re-assembled to x's row order, batch statistics: the mean over chunks of each chunk's update,
    i.e. r <- m r + (1 - m) mean_g mu_g, as averaging per-GPU running statistics gives). One vmapped forward.
    """
    b = x.shape[0]
    chunks = x.reshape(n_groups, b // n_groups, *x.shape[1:])

    def one(chunk):
        fw = Forward(variables)
        return fn(fw, chunk), fw.batch_stats

    outs, stats = jax.vmap(one)(chunks)
    outs = jax.tree.map(lambda a: a.reshape(b, *a.shape[2:]), outs)
    return outs, jax.tree.map(lambda s: jnp.mean(s, axis=0), stats)


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
    Keys (config.objective): temperature, queue_size, projector_hidden, projector_dim, projector_bn, ema_base,
    ema_final, bn_groups, symmetric. State: target, queue [V, K, D], queue_ptr, step.
    """
    name = 'mocov2'
    projector: MLP = None
    temperature: float = 0.2
    queue_size: int = 65536
    ema_base: float = 0.999
    ema_final: float = 0.999
    bn_groups: int = 0
    symmetric: bool = False

    @classmethod
    def settings(cls, config, ctx: Context) -> dict:
        cfg = config.objective
        batch, devices = int(ctx.global_batch), ctx.num_devices
        queue_size, groups = int(cfg.queue_size), int(cfg.bn_groups)
        if queue_size < 1 or queue_size % batch:
            raise ValueError(f'config key "objective.queue_size" ({cfg.queue_size}) must be a positive multiple of '
                             f'the global batch (batch_size = {batch}), e.g. {max(1, queue_size // batch) * batch}')
        if groups < 0:
            raise ValueError(f'config key "objective.bn_groups" must be >= 0 (0: one per device), got {groups}')
        if groups > 1 and groups % devices:
            raise ValueError(f'config key "objective.bn_groups" ({groups}) must be 0, 1 or a multiple of the number '
                             f'of devices ({devices})')
        if batch % max(groups or devices, 1):
            raise ValueError(f'batch_size {batch} does not split into objective.bn_groups = {groups or devices} '
                             f'equal BatchNorm groups')
        return dict(ctx=ctx, projector=mlp_from_config(cfg, 'projector', ctx.dtype),
                    temperature=check_temperature(cfg), queue_size=queue_size, ema_base=float(cfg.ema_base),
                    ema_final=float(cfg.ema_final), bn_groups=groups, symmetric=bool(cfg.symmetric))

    @classmethod
    def from_config(cls, config, ctx: Context) -> 'MoCoV2':
        return cls(**cls.settings(config, ctx))

    @property
    def num_queries(self) -> int:
        return 2 if self.symmetric else 1

    def init(self, rng, encoder_variables):
        head_key, queue_key = jax.random.split(rng)
        feats = jnp.zeros((2, self.ctx.feature_dim), jnp.float32)
        heads = init_heads(head_key, {'projector': (self.projector, (feats,))})
        queue = jax.random.normal(queue_key, (self.num_queries, self.queue_size, self.projector.out_dim), jnp.float32)
        state = {'target': _ema_copy(encoder_variables, heads, ('projector',)), 'queue': losses.l2_normalize(queue),
                 'queue_ptr': jnp.zeros((), jnp.int32), 'step': jnp.zeros((), jnp.int32)}
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

    def encode(self, variables, target, xq, xk, rng):
        """-> (queries [V][B, D], probe features [B, F], keys [V][B, D], online stats, target stats)."""
        groups = self.bn_groups or self.ctx.num_devices
        if groups == 1:  # one BatchNorm group: the global batch, nothing to shuffle
            q, f, stats = self._forward_views(variables, xq, 1)
            k, _, target_stats = self._forward_views(target, xk, 1)
            return q, f[0], [jax.lax.stop_gradient(x) for x in k], stats, target_stats
        perms = [jax.random.permutation(key, xk[0].shape[0]) for key in jax.random.split(rng, len(xk))]
        shuffled = [x[p] for x, p in zip(xk, perms)]
        local_groups = groups // self.ctx.num_devices

        def local(online, key_net, xq_local, xk_local):
            q, f, stats = self._forward_views(online, xq_local, local_groups)
            k, _, target_stats = self._forward_views(key_net, xk_local, local_groups)
            return q, f[0], k, jax.lax.pmean(stats, AXIS), jax.lax.pmean(target_stats, AXIS)

        run = self.ctx.per_device(local, in_specs=(REPLICATED, REPLICATED, BATCH, BATCH),
                                  out_specs=(BATCH, BATCH, BATCH, REPLICATED, REPLICATED))
        q, f, k, stats, target_stats = run(variables, target, list(xq), shuffled)
        k = [jax.lax.stop_gradient(x[jnp.argsort(p)]) for x, p in zip(k, perms)]
        return q, f, k, stats, target_stats

    def query_loss(self, rng, q, k, queue, step):
        """-> (InfoNCE of queries q against keys k and the queue, metrics); MoCHi adds its synthetic negatives."""
        return losses.moco_infonce(q, k, queue, self.temperature), {}

    def loss(self, variables, objective_state, views, batch, rng):
        shuffle_key, mix_key = jax.random.split(rng)
        xq = list(views[:self.num_queries])
        xk = [views[1], views[0]][:self.num_queries]  # query v's positive key is the other view
        target = objective_state['target']
        q, feats, k, stats, target_stats = self.encode(variables, target, xq, xk, shuffle_key)
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
        state = dict(objective_state, target=dict(target, batch_stats=jax.lax.stop_gradient(target_stats)),
                     queue=new_queue, queue_ptr=(ptr + keys.shape[1]) % self.queue_size, step=step + 1)
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
    Keys: MoCo v2's plus n_hard (<= queue_size), n_mix, n_mix_query, mix_start_epochs, mix_start_steps.
    Metric: ``mixing`` (1 once the synthetic negatives are in use).
    """
    name = 'mochi'
    n_hard: int = 1024
    n_mix: int = 1024
    n_mix_query: int = 128
    mix_start: int = 0

    @classmethod
    def from_config(cls, config, ctx: Context) -> 'MoCHi':
        cfg = config.objective
        base = cls.settings(config, ctx)
        n_hard, n_mix, n_mix_query = int(cfg.n_hard), int(cfg.n_mix), int(cfg.n_mix_query)
        if not 1 <= n_hard <= base['queue_size']:
            raise ValueError(f'config key "objective.n_hard" ({n_hard}) must be between 1 and the queue size '
                             f'(objective.queue_size = {base["queue_size"]})')
        if n_mix < 0 or n_mix_query < 0:
            raise ValueError(f'config keys "objective.n_mix" and "objective.n_mix_query" must be >= 0, got '
                             f'{n_mix} and {n_mix_query}')
        start = int(cfg.mix_start_steps)
        if start < 0:
            start = int(round(float(cfg.mix_start_epochs) * _steps_per_epoch(ctx)))
        return cls(**base, n_hard=n_hard, n_mix=n_mix, n_mix_query=n_mix_query, mix_start=start)

    def query_loss(self, rng, q, k, queue, step):
        if self.n_mix + self.n_mix_query == 0:
            return super().query_loss(rng, q, k, queue, step)
        active = step >= self.mix_start

        def mixed():
            synthetic = losses.mochi_negatives(rng, q, queue, self.n_hard, self.n_mix, self.n_mix_query)
            return losses.moco_infonce(q, k, queue, self.temperature, synthetic)

        value = jax.lax.cond(active, mixed, lambda: losses.moco_infonce(q, k, queue, self.temperature))
        return value, {'mixing': active.astype(jnp.float32)}


@register
@dataclasses.dataclass(frozen=True)
class MoCoV3(BYOL):
    """MoCo v3 (Chen, Xie & He 2021): symmetric in-batch contrast of a predictor's output against momentum keys.

    Online: encoder f, projector g, predictor h; momentum network f', g' (EMA). For views 1, 2 with q = h(g(f(x)))
    and k = g'(f'(x)) (stop-gradient), over the global batch (losses.mocov3_loss):
        ctr(q, k) = 2 tau * mean_i -log( exp(q_i.k_i / tau) / sum_j exp(q_i.k_j / tau) ),  L = ctr(q1, k2) + ctr(q2, k1)
    Momentum: m_t = 1 - (1 - m_0)(cos(pi t / T) + 1) / 2 with t = optimizer steps completed, as the reference
    (main_moco.py updates the momentum encoder before iteration t's forward with the momentum of iteration t).
    BatchNorm: SyncBN in the reference, i.e. statistics over the global batch here; each view runs on its own
    (``bn_per_view`` True; the reference calls the encoders once per view). Projector: Linear (no bias) - BN - ReLU
    layers and a last BN without affine; predictor likewise, its last BN only in the ViT setting
    (``predictor_last_bn``). ViT: ``freeze_patch_embed`` keeps the random patch projection ('encoder/patch_embed')
    fixed for the whole run (the reference's ``--stop-grad-conv1``; off by default there, on in its ViT recipes).
    Everything is global, so 1 and n devices agree.
    Keys (config.objective): temperature, projector_hidden, projector_dim, projector_bn, predictor_hidden,
    predictor_dim, predictor_bn, predictor_last_bn, ema_base, ema_final, bn_per_view, freeze_patch_embed.
    """
    name = 'mocov3'
    temperature: float = 1.0
    freeze_patch_embed: bool = False

    @classmethod
    def from_config(cls, config, ctx: Context) -> 'MoCoV3':
        cfg = config.objective
        freeze = bool(cfg.freeze_patch_embed)
        if freeze and not _is_vit(ctx.encoder):
            raise ValueError('config key "objective.freeze_patch_embed" needs a ViT backbone (model.backbone = '
                             f'vit_*), got {type(ctx.encoder).__name__}')
        projector = mlp_from_config(cfg, 'projector', ctx.dtype, last_bn=True, last_bn_affine=False, use_bias=False)
        predictor = mlp_from_config(cfg, 'predictor', ctx.dtype, last_bn=bool(cfg.predictor_last_bn),
                                    last_bn_affine=False, use_bias=False)
        return cls(ctx=ctx, projector=projector, predictor=predictor, ema_base=float(cfg.ema_base),
                   ema_final=float(cfg.ema_final), bn_per_view=bool(cfg.bn_per_view),
                   temperature=check_temperature(cfg), freeze_patch_embed=freeze)

    @property
    def freeze_steps(self) -> dict[str, int]:
        return {'encoder/patch_embed': max(1, self.ctx.total_steps)} if self.freeze_patch_embed else {}

    def loss(self, variables, objective_state, views, batch, rng):
        fw = Forward(variables, bn_per_view=self.bn_per_view)
        feats = [o['pooled'] for o in fw.encode(self.ctx.encoder, views[:2])]
        z_a, z_b = fw.apply_views('projector', self.projector, feats)
        q_a, q_b = fw.apply_views('predictor', self.predictor, [z_a, z_b])
        (k_a, k_b), target_stats = self.target_forward(objective_state, views[:2])
        loss = losses.mocov3_loss(q_a, k_b, self.temperature) + losses.mocov3_loss(q_b, k_a, self.temperature)
        metrics = {'pos_cosine': 0.5 * (losses.cosine_similarity(q_a, k_b).mean()
                                        + losses.cosine_similarity(q_b, k_a).mean())}
        state = dict(objective_state, target=dict(objective_state['target'], batch_stats=target_stats))
        return loss, LossOutput(metrics, fw.batch_stats, state, feats[0])

    def update(self, params, objective_state, step):
        momentum = cosine_ema_momentum(self.ema_base, step, self.ctx.total_steps, self.ema_final)
        return params, dict(objective_state, target=ema_network(objective_state['target'], params, momentum))


def _is_vit(encoder) -> bool:
    from ssljax.models.vit import ViT
    return isinstance(encoder, ViT)
