"""DINO (Caron et al. 2021): self-distillation from an EMA teacher with centring and sharpening, multi-crop."""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import jax
import jax.numpy as jnp

from ssljax.config_lib import ConfigError
from ssljax.models.heads import DINOHead
from ssljax.objectives import base, losses
from ssljax.objectives.base import (
    Forward,
    LossOutput,
    Objective,
    count_views,
    ema_network,
    init_heads,
    register,
    require,
)
from ssljax.objectives.ema import ema_copy, ema_momentum_at, with_batch_stats


@register
@dataclasses.dataclass(frozen=True)
class DINO(Objective):
    """DINO: self-distillation from an EMA teacher with centring and sharpening, over multi-crop views.

    Student = encoder f + DINOHead h (MLP, L2-normalised bottleneck, weight-normalised output of K units); teacher =
    EMA copies f', h'. ``views``: the first 2 are global crops, any further ones local crops (``multicrop`` recipe).
    The teacher sees only the 2 global views, the student all V views; with t_i = h'(f'(x_i)) and s_v = h(f(x_v)):
        q_i = softmax((t_i - c) / tau_t),
        L = mean over pairs (i < 2, v != i) of  mean_b -sum_k q_i log softmax(s_v / tau_s)
    (losses.dino_loss). After each loss the centre moves, c <- m c + (1 - m) mean over both global views and the batch
    of t (m = center_momentum). tau_s is fixed; tau_t follows the reference's per-epoch table (main_dino.py DINOLoss)
        tau_t(e) = concat(linspace(warmup_teacher_temp, teacher_temp, W), teacher_temp ...)[e],  e = step // S
    (W = warmup_teacher_temp_epochs, S = steps per epoch, step = losses computed before this one): with W >= 2,
    tau_t(e) = w + (t - w) min(e, W - 1) / (W - 1); W = 1 uses w in epoch 0 only; W = 0 uses t throughout.
    After optimizer step t (0-based) the teacher moves, xi <- m_t xi + (1 - m_t) theta, m_t from ema_base to
    ema_final on the per-step cosine (the reference's momentum_schedule[it]; see ema_momentum_at). The teacher's
    BatchNorm running statistics come from its own forward passes (the reference's EMA covers parameters only).

    Also as the reference: evaluation scores the teacher by default (``eval_network = 'teacher'``; the student with
    ``--config.evals.<name>.network=online``), and the head's last layer (``head/last_layer``: the weight-normalised
    prototypes V and, without norm_last_layer, g) is frozen for the first ``freeze_last_layer_epochs`` epochs
    (``freeze_steps``; the optimizer drops its updates, as ``cancel_gradients_last_layer`` drops its gradients).
    BatchNorm: ``bn_per_view`` False (default; the reference's MultiCropWrapper concatenates the crops of equal
    resolution for the backbone and all crops for the head); True runs every view on its own (solo-learn).
    Gradient clipping and DINO's weight-decay schedule are optimizer keys (optimizer.clip_grad, weight_decay_end).
    State: {'teacher', 'center' [K], 'step' (losses computed, drives the tau_t table)}.

    Defaults (the config keys): main_dino.py's argparse defaults for the head, head_out 65536, head_hidden 2048,
    head_bottleneck 256, head_layers 3, head_bn False (--use_bn_in_head), norm_last_layer True, and for student_temp
    0.1, center_momentum 0.9, ema_base 0.996 -> ema_final 1.0, freeze_last_layer_epochs 1; the teacher temperature of
    the reference README's ViT-S/16 300-epoch command, teacher_temp 0.07 after warmup_teacher_temp 0.04 over
    warmup_teacher_temp_epochs 30 (the argparse default, which its ResNet-50 command keeps, is 0.04 flat: W = 0; the
    300-epoch command also sets norm_last_layer False); bn_per_view False. The recipes in configs/dino.py override
    through ``common.recipe``: the embedded MNIST budget uses 0.04 flat (W = 0) and, with a ResNet, head_bn True;
    solo-learn's CIFAR recipe uses 0.07 flat (W = 0).
    Metrics: ``teacher_temp``, ``teacher_entropy`` (mean entropy of q; log K when uniform, 0 when one-hot),
    ``student_teacher_ce`` (= loss).
    """

    name = 'dino'
    eval_network = 'teacher'
    head_out: int = 65536
    head_hidden: int = 2048
    head_bottleneck: int = 256
    head_layers: int = 3
    head_bn: bool = False
    norm_last_layer: bool = True
    student_temp: float = 0.1
    teacher_temp: float = 0.07
    warmup_teacher_temp: float = 0.04
    warmup_teacher_temp_epochs: int = 30
    center_momentum: float = 0.9
    ema_base: float = 0.996
    ema_final: float = 1.0
    freeze_last_layer_epochs: int = 1
    bn_per_view: bool = False

    @classmethod
    def check_config(cls, config, num_devices: int) -> None:
        v = cls.config_values(config)
        for key in ('student_temp', 'teacher_temp', 'warmup_teacher_temp'):
            require(v[key] > 0, key, f'must be > 0, got {v[key]}')
        for key in ('warmup_teacher_temp_epochs', 'freeze_last_layer_epochs'):
            require(v[key] >= 0, key, f'must be >= 0, got {config.objective[key]}')
        require(0 <= v['center_momentum'] < 1, 'center_momentum', f'must be in [0, 1), got {v["center_momentum"]}')
        if 'augment' in config and count_views(config) < 2:
            raise ConfigError(
                f'config key "augment.views": dino needs at least 2 views (2 global crops first), got '
                f'{count_views(config)}'
            )

    @property
    def head(self) -> DINOHead:
        return DINOHead(
            out_dim=self.head_out,
            hidden_dim=self.head_hidden,
            bottleneck_dim=self.head_bottleneck,
            num_layers=self.head_layers,
            use_bn=self.head_bn,
            norm_last_layer=self.norm_last_layer,
            dtype=self.ctx.dtype,
        )

    @property
    def steps_per_epoch(self) -> int:
        """Optimizer steps per epoch of the run (``base.steps_per_epoch``)."""
        return base.steps_per_epoch(self.ctx)

    @property
    def freeze_steps(self) -> dict[str, int]:
        """{'head/last_layer': freeze_last_layer_epochs x steps per epoch} (nothing when 0 epochs)."""
        steps = self.freeze_last_layer_epochs * self.steps_per_epoch
        return {'head/last_layer': steps} if steps > 0 else {}

    def teacher_temperature(self, step: jax.Array) -> jax.Array:
        """tau_t for the loss computed after ``step`` optimizer steps: the reference's per-epoch table (above)."""
        w, t, W = self.warmup_teacher_temp, self.teacher_temp, self.warmup_teacher_temp_epochs
        if W <= 0:
            return jnp.asarray(t, jnp.float32)
        epoch = jnp.asarray(step) // self.steps_per_epoch
        frac = jnp.clip(epoch / max(W - 1, 1), 0.0, 1.0)
        return (w + (t - w) * frac).astype(jnp.float32)

    def init(self, rng, encoder_variables):
        feats = jnp.zeros((2, self.ctx.feature_dim), jnp.float32)
        heads = init_heads(rng, {'head': (self.head, (feats,))})
        state = {
            'teacher': ema_copy(encoder_variables, heads, ('head',)),
            'center': jnp.zeros((self.head.out_dim,), jnp.float32),
            'step': jnp.zeros((), jnp.int32),
        }
        return heads, state

    def loss(self, variables, objective_state, views, batch, rng):
        if len(views) < 2:
            raise ConfigError(
                f'config key "augment.views": dino needs at least 2 views (2 global crops first), got {len(views)}'
            )
        fw = Forward(variables, bn_per_view=self.bn_per_view)
        feats = [o['pooled'] for o in fw.encode(self.ctx.encoder, views)]
        teacher_fw = Forward(objective_state['teacher'], bn_per_view=self.bn_per_view)
        t_feats = [o['pooled'] for o in teacher_fw.encode(self.ctx.encoder, views[:2])]
        return self._loss_from(fw, teacher_fw, feats, t_feats, objective_state)

    # Gradient accumulation: student and teacher encoders per micro-batch; heads, centre and loss on the whole batch.
    accumulation: ClassVar[str] = 'split'

    def features(self, variables, objective_state, views, batch, rng):
        online = [o['pooled'] for o in Forward(variables, bn_per_view=self.bn_per_view).encode(self.ctx.encoder, views)]
        teacher_fw = Forward(objective_state['teacher'], bn_per_view=self.bn_per_view)
        fixed = [jax.lax.stop_gradient(o['pooled']) for o in teacher_fw.encode(self.ctx.encoder, views[:2])]
        return online, fixed

    def head_loss(self, variables, objective_state, online, fixed, views, batch, rng):
        fw = Forward(variables, bn_per_view=self.bn_per_view)
        teacher_fw = Forward(objective_state['teacher'], bn_per_view=self.bn_per_view)
        return self._loss_from(fw, teacher_fw, list(online), list(fixed), objective_state)

    def _loss_from(self, fw, teacher_fw, feats, t_feats, objective_state):
        student = fw.apply_views('head', self.head, feats)
        teacher = [jax.lax.stop_gradient(t) for t in teacher_fw.apply_views('head', self.head, t_feats)]
        center = objective_state['center']
        temp = self.teacher_temperature(objective_state['step'])
        loss = losses.dino_loss(student, teacher, center, self.student_temp, temp)
        batch_center = jnp.mean(jnp.concatenate(teacher, axis=0), axis=0)
        new_center = self.center_momentum * center + (1.0 - self.center_momentum) * batch_center
        q = jax.nn.softmax((teacher[0] - center) / temp, axis=-1)
        metrics = {
            'teacher_temp': temp,
            'student_teacher_ce': loss,
            'teacher_entropy': jnp.mean(-jnp.sum(q * jnp.log(jnp.maximum(q, 1e-30)), axis=-1)),
        }
        state = with_batch_stats(objective_state, 'teacher', jax.lax.stop_gradient(teacher_fw.batch_stats))
        state = dict(state, center=new_center, step=objective_state['step'] + 1)
        return loss, LossOutput(metrics, fw.batch_stats, state, feats[0])

    def update(self, params, objective_state, step):
        """``step`` = optimizer steps completed (this one included); the momentum is taken at step - 1."""
        momentum = ema_momentum_at(self.ema_base, step, self.ctx.total_steps, self.ema_final)
        return params, dict(objective_state, teacher=ema_network(objective_state['teacher'], params, momentum))
