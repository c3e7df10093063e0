"""Optimizers from config: LARS / SGD / AdamW, warm-up + cosine, parameter groups.

Parameter groups are chosen by the top-level name in ``params`` (``encoder``, ``projector``, ``predictor``, ...):
heads an objective sets itself (``Objective.frozen_heads``) get no update at all; heads listed in
``optimizer.constant_lr_heads`` keep the base learning rate for the whole run (SimSiam's predictor). Biases and
normalisation scales (every parameter with ndim <= 1) are excluded from weight decay and from LARS adaptation.
"""
from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax


def learning_rate(config) -> float:
    """Peak learning rate: base lr x batch_size / 256 under linear scaling."""
    o = config.optimizer
    if o.lr_scaling == 'linear':
        return o.lr * config.batch_size / 256
    if o.lr_scaling == 'none':
        return o.lr
    raise ValueError(f'optimizer.lr_scaling must be "linear" or "none", got {o.lr_scaling!r}')


def warmup_cosine(peak: float, total_steps: int, warmup_steps: int, init_lr: float = 0.0,
                  final_lr: float = 0.0) -> optax.Schedule:
    """Linear warm-up from init_lr to peak over warmup_steps, then cosine decay to final_lr at total_steps."""
    warmup_steps = min(warmup_steps, total_steps)
    return optax.warmup_cosine_decay_schedule(init_value=init_lr, peak_value=peak, warmup_steps=warmup_steps,
                                              decay_steps=max(total_steps, warmup_steps + 1), end_value=final_lr)


def decay_mask(params) -> Any:
    """True for weights that take weight decay and LARS adaptation: every leaf with ndim > 1."""
    return jax.tree.map(lambda p: p.ndim > 1, params)


class LarsState(NamedTuple):
    momentum: Any
    count: jax.Array


def lars(schedule: optax.Schedule, weight_decay: float, momentum: float, eta: float, mask, clip: bool,
         eps: float = 1e-9) -> optax.GradientTransformation:
    """LARS (You et al. 2017) with optional LARC clipping, as in the SimCLR/BYOL and solo-learn code.

    For each masked tensor w with gradient g:  g <- g + wd w;  r = eta ||w|| / ||g||  (1 where either norm is 0);
    the step size is lr_t r, or min(lr_t r, lr_t) = lr_t min(r, 1) with ``clip`` (solo-learn's clip_lr);
    unmasked tensors (biases, norm scales) take plain lr_t g. Then heavy-ball momentum: v <- mu v + step g; w <- w - v.
    """
    def init_fn(params):
        return LarsState(jax.tree.map(jnp.zeros_like, params), jnp.zeros([], jnp.int32))

    def update_fn(grads, state, params):
        lr = schedule(state.count)
        masks = mask(params) if callable(mask) else mask

        def scaled(g, w, adapt):
            if not adapt:
                return lr * g
            g = g + weight_decay * w
            w_norm, g_norm = jnp.linalg.norm(w), jnp.linalg.norm(g)
            ratio = jnp.where((w_norm > 0) & (g_norm > 0), eta * w_norm / (g_norm + eps), 1.0)
            if clip:
                ratio = jnp.minimum(ratio, 1.0)
            return lr * ratio * g

        steps = jax.tree.map(scaled, grads, params, masks)
        velocity = jax.tree.map(lambda v, s: momentum * v + s, state.momentum, steps)
        return jax.tree.map(jnp.negative, velocity), LarsState(velocity, state.count + 1)

    return optax.GradientTransformation(init_fn, update_fn)


def base_transform(config, schedule: optax.Schedule, mask) -> optax.GradientTransformation:
    """The configured optimizer for one parameter group, driven by ``schedule``."""
    o = config.optimizer
    wd_mask = mask if o.exclude_bias_and_norm else None
    if o.name == 'lars':
        return lars(schedule, o.weight_decay, o.momentum, o.lars_eta,
                    mask if o.exclude_bias_and_norm else (lambda p: jax.tree.map(lambda _: True, p)),
                    clip=o.lars_clip)
    if o.name == 'sgd':
        return optax.chain(optax.add_decayed_weights(o.weight_decay, wd_mask),
                           optax.sgd(schedule, momentum=o.momentum))
    if o.name == 'adamw':
        return optax.adamw(schedule, b1=o.b1, b2=o.b2, weight_decay=o.weight_decay, mask=wd_mask)
    raise ValueError(f'unknown optimizer.name {o.name!r}; known: lars, sgd, adamw')


def create_optimizer(config, total_steps: int, steps_per_epoch: int,
                     frozen_heads: tuple[str, ...] = ()) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """-> (optimizer over the whole params tree, the main learning-rate schedule for logging).

    Groups are assigned from the top-level names of the params tree when the optimizer is initialised; call
    ``check_param_groups`` once the params exist to catch a misspelt head name.
    """
    o = config.optimizer
    peak = learning_rate(config)
    warmup = o.warmup_steps if o.warmup_steps >= 0 else int(round(o.warmup_epochs * steps_per_epoch))
    schedule = warmup_cosine(peak, total_steps, warmup, o.warmup_init_lr, o.final_lr)
    constant = tuple(o.constant_lr_heads)

    def group(name: str) -> str:
        return 'frozen' if name in frozen_heads else 'constant' if name in constant else 'main'

    transforms = {'main': base_transform(config, schedule, decay_mask),
                  'constant': base_transform(config, optax.constant_schedule(peak), decay_mask),
                  'frozen': optax.set_to_zero()}
    tx = optax.multi_transform(
        transforms, lambda p: {name: jax.tree.map(lambda _: group(name), sub) for name, sub in p.items()})
    return tx, schedule


def check_param_groups(config, params, frozen_heads: tuple[str, ...] = ()) -> None:
    """Every head named by an optimizer group must exist in ``params``."""
    unknown = [h for h in tuple(config.optimizer.constant_lr_heads) + tuple(frozen_heads) if h not in params]
    if unknown:
        raise ValueError(f'optimizer groups name heads {unknown} that the model does not have; '
                         f'its parameter groups are {sorted(params)} (config key "optimizer.constant_lr_heads")')
