"""Optimizers from config: LARS / SGD / AdamW, warm-up + cosine, gradient clipping, parameter groups.

One optimizer step, for gradients g of the whole params tree:

1. Gradient clipping (``optimizer.clip_grad`` > 0), before anything else. ``clip_grad_mode = 'per_tensor'`` (DINO's
   ``clip_gradients``): each tensor g <- g min(1, c / (||g|| + 1e-6)); ``'global'``: every trainable tensor
   g <- g min(1, c / ||g||_global) (``optax.clip_by_global_norm``; the norm spans all params but ``frozen_heads``).
2. The optimizer ``optimizer.name`` per parameter group, driven by the learning rate lr_t of ``warmup_cosine`` (linear
   warm-up, ``optimizer.warmup_schedule`` 'optax' or 'solo_learn', then cosine to ``final_lr``) and the weight decay
   wd_t: constant ``weight_decay``, or, when
   ``optimizer.weight_decay_end`` >= 0, DINO's per-step cosine wd_t = wd_end + (wd - wd_end)(1 + cos(pi t / T)) / 2
   (no warm-up; t clamped to T = total_steps). See ``lars`` for LARS; SGD is PyTorch's (buf <- mu buf + g + wd_t w;
   w <- w - lr_t buf); AdamW is decoupled (w <- w - lr_t (m_hat / (sqrt(v_hat) + eps) + wd_t w), eps =
   ``optimizer.eps``).

Parameter groups are chosen by the top-level name in ``params`` (``encoder``, ``projector``, ``predictor``, ...):
heads an objective sets itself (``Objective.frozen_heads``) get no update at all; heads listed in
``optimizer.constant_lr_heads`` keep the base learning rate for the whole run (SimSiam's predictor). Biases and
normalisation scales (every parameter with ndim <= 1) are excluded from weight decay and from LARS adaptation when
``optimizer.exclude_bias_and_norm``. A scanned ViT's stacked blocks (``encoder/blocks``, and MAE's
``decoder/blocks``; one leading layer axis) are treated layer by layer in every per-tensor rule (mask, trust ratio,
per-tensor clipping), as the unrolled blocks are. ``create_optimizer(..., freeze_steps={'head/last_layer': N})``
freezes a subtree for the first N optimizer steps (DINO's last layer): see ``create_optimizer``.
"""

from __future__ import annotations

import numbers
from typing import Any, Callable, Mapping, NamedTuple

import jax
import jax.numpy as jnp
import optax

LARS_VARIANTS = ('solo_learn', 'tf')
WARMUP_SCHEDULES = ('optax', 'solo_learn')
CLIP_GRAD_MODES = ('per_tensor', 'global')

ScalarOrSchedule = float | Callable[[jax.Array], jax.Array]


def learning_rate(config) -> float:
    """Peak learning rate: base lr x batch_size / 256 under linear scaling."""
    o = config.optimizer
    if o.lr_scaling == 'linear':
        return o.lr * config.batch_size / 256
    if o.lr_scaling == 'none':
        return o.lr
    raise ValueError(f'optimizer.lr_scaling must be "linear" or "none", got {o.lr_scaling!r}')


def warmup_cosine(
    peak: float,
    total_steps: int,
    warmup_steps: int,
    init_lr: float = 0.0,
    final_lr: float = 0.0,
    warmup: str = 'optax',
) -> optax.Schedule:
    """Linear warm-up from init_lr to peak over W = warmup_steps, then cosine decay to final_lr at T = total_steps.

    For t >= W both forms give lr_t = final + (peak - final) (1 + cos(pi (t - W) / (T - W))) / 2. For t < W:

    - 'optax' (the default; ``optax.warmup_cosine_decay_schedule``, as SimCLR's TF code, step / warmup_steps):
      lr_t = init + (peak - init) t / W, the peak first reached at step W.
    - 'solo_learn' (solo-learn's ``LinearWarmupCosineAnnealingLR``, stepped per optimizer step from last_epoch 0):
      lr_t = init + (peak - init) t / (W - 1), the peak reached at step W - 1 and held at step W.
    """
    if warmup not in WARMUP_SCHEDULES:
        raise ValueError(f'optimizer.warmup_schedule must be one of {WARMUP_SCHEDULES}, got {warmup!r}')
    warmup_steps = min(warmup_steps, total_steps)
    schedule = optax.warmup_cosine_decay_schedule(
        init_value=init_lr,
        peak_value=peak,
        warmup_steps=warmup_steps,
        decay_steps=max(total_steps, warmup_steps + 1),
        end_value=final_lr,
    )
    if warmup == 'optax' or warmup_steps <= 1:  # W = 1: both give init at t = 0 and the peak from t = 1
        return schedule
    slope = (peak - init_lr) / (warmup_steps - 1)

    def solo_learn(count):
        t = jnp.asarray(count)
        linear = init_lr + slope * jnp.minimum(t, warmup_steps - 1).astype(jnp.float32)
        return jnp.where(t < warmup_steps, linear, schedule(count))

    return solo_learn


def weight_decay_schedule(config, total_steps: int) -> ScalarOrSchedule:
    """The weight decay: the float ``weight_decay`` when ``weight_decay_end`` < 0, else DINO's cosine_scheduler.

    wd_t = wd_end + (wd - wd_end) (1 + cos(pi min(t, T) / T)) / 2, T = total_steps: wd at t = 0, wd_end at t = T;
    per step, no warm-up (DINO's ``cosine_scheduler(weight_decay, weight_decay_end, epochs, niter_per_ep)``).
    """
    o = config.optimizer
    start, end = float(o.weight_decay), float(o.weight_decay_end)
    if end < 0:
        return start
    horizon = max(int(total_steps), 1)

    def schedule(count):
        t = jnp.minimum(count, horizon).astype(jnp.float32)
        return end + 0.5 * (start - end) * (1.0 + jnp.cos(jnp.pi * t / horizon))

    return schedule


# A scanned ViT (model.scan) keeps its blocks' parameters stacked on a leading axis under encoder/blocks (and MAE's
# decoder, which follows the encoder's layout, under decoder/blocks): every per-tensor rule here (the weight-decay
# mask, LARS's trust ratio, per-tensor clipping) treats each layer's slice as its own tensor there, so a scanned
# model is optimised exactly as the unrolled one.
STACKED_PATHS = (('encoder', 'blocks'), ('decoder', 'blocks'))


def _is_stacked(path) -> bool:
    keys = [getattr(k, 'key', None) for k in path]
    return any(
        tuple(keys[i : i + len(stacked)]) == stacked
        for stacked in STACKED_PATHS
        for i in range(len(keys) - len(stacked) + 1)
    )


def stacked_axes(tree) -> Any:
    """Per leaf: how many leading axes stack layers (1 under encoder/blocks or decoder/blocks, else 0)."""
    return jax.tree_util.tree_map_with_path(lambda path, _: int(_is_stacked(path)), tree)


def decay_mask(params) -> Any:
    """True for weights that take weight decay and LARS adaptation: every leaf with ndim > 1 (per layer, for the
    stacked blocks of a scanned ViT)."""
    return jax.tree_util.tree_map_with_path(lambda path, p: p.ndim - int(_is_stacked(path)) > 1, params)


def _as_schedule(value: ScalarOrSchedule) -> Callable[[jax.Array], jax.Array]:
    return value if callable(value) else (lambda count: jnp.asarray(value, jnp.float32))


def _norm(x: jax.Array, stacked: int = 0) -> jax.Array:
    """||x||, or per layer ([N, 1, ...], broadcasting against x) over the axes after ``stacked`` leading ones."""
    if not stacked:
        return jnp.sqrt(jnp.sum(jnp.square(x.astype(jnp.float32))))
    return jnp.sqrt(jnp.sum(jnp.square(x.astype(jnp.float32)), axis=tuple(range(stacked, x.ndim)), keepdims=True))


class LarsDirectionState(NamedTuple):
    count: jax.Array  # optimizer steps taken: the index of lr_t and wd_t


def lars_direction(
    learning_rate: ScalarOrSchedule,
    weight_decay: ScalarOrSchedule,
    eta: float,
    mask,
    clip: bool,
    variant: str = 'solo_learn',
    eps: float = 1e-8,
) -> optax.GradientTransformation:
    """The trust-ratio-scaled direction d of LARS, per tensor w with gradient g (before momentum).

    ``mask`` (a bool tree or a function of params) marks the adapted tensors. With lr = lr_t, wd = wd_t:

    - 'solo_learn': adapted and ||w|| != 0 and ||g|| != 0: r = eta ||w|| / (||g|| + wd ||w|| + eps), with ``clip``
      r <- min(r / lr, 1); d = r (g + wd w). Otherwise (not adapted, or a zero norm) d = g: no weight decay.
    - 'tf': adapted: g' = g + wd w, r = eta ||w|| / ||g'|| (1 where either norm is 0), with ``clip`` r <- min(r, 1);
      d = lr r g'. Not adapted: d = lr g. The learning rate is inside d, so it enters the momentum.
    """
    if variant not in LARS_VARIANTS:
        raise ValueError(f'optimizer.lars_variant must be one of {LARS_VARIANTS}, got {variant!r}')
    lr_fn, wd_fn = _as_schedule(learning_rate), _as_schedule(weight_decay)

    def init_fn(params):
        del params
        return LarsDirectionState(jnp.zeros([], jnp.int32))

    def update_fn(updates, state, params):
        if params is None:
            raise ValueError('lars_direction needs the params: call update(grads, state, params)')
        lr, wd = lr_fn(state.count), wd_fn(state.count)
        masks = mask(params) if callable(mask) else mask

        def solo_learn(g, w, adapt, k):
            if not adapt:
                return g
            w_norm, g_norm = _norm(w, k), _norm(g, k)
            ratio = eta * w_norm / (g_norm + wd * w_norm + eps)
            if clip:  # min(r / lr, 1), safe at lr = 0 (the step lr d is 0 there anyway)
                ratio = jnp.where(ratio < lr, ratio / jnp.where(lr > 0, lr, 1.0), 1.0)
            return jnp.where((w_norm > 0) & (g_norm > 0), ratio * (g + wd * w), g).astype(g.dtype)

        def tf(g, w, adapt, k):
            if not adapt:
                return (lr * g).astype(g.dtype)
            g = g + wd * w
            w_norm, g_norm = _norm(w, k), _norm(g, k)
            ratio = jnp.where((w_norm > 0) & (g_norm > 0), eta * w_norm / jnp.where(g_norm > 0, g_norm, 1.0), 1.0)
            if clip:
                ratio = jnp.minimum(ratio, 1.0)
            return (lr * ratio * g).astype(g.dtype)

        direction = solo_learn if variant == 'solo_learn' else tf
        out = jax.tree.map(direction, updates, params, masks, stacked_axes(params))
        return out, LarsDirectionState(optax.safe_increment(state.count))

    return optax.GradientTransformation(init_fn, update_fn)


def lars(
    schedule: ScalarOrSchedule,
    weight_decay: ScalarOrSchedule,
    momentum: float,
    eta: float,
    mask,
    clip: bool,
    variant: str = 'solo_learn',
    eps: float = 1e-8,
) -> optax.GradientTransformation:
    """LARS (You et al. 2017); ``variant`` 'solo_learn' (default) or 'tf'. d is ``lars_direction``'s.

    - 'solo_learn': solo-learn's ``solo/utils/lars.py`` (PyTorch SGD placement, dampening 0, no Nesterov):
      buf <- mu buf + d;  w <- w - lr_t buf.  With mu = 0 and ``clip``, one step is -min(r, lr_t) (g + wd w).
    - 'tf': the SimCLR/BYOL TensorFlow reference: v <- mu v + d (d = lr_t r (g + wd w) holds the lr);  w <- w - v.

    ``schedule`` gives lr_t and ``weight_decay`` wd_t (each a float or a function of the step count).
    """
    direction = lars_direction(schedule, weight_decay, eta, mask, clip, variant, eps)
    if variant == 'solo_learn':
        return optax.chain(direction, optax.trace(decay=momentum), optax.scale_by_learning_rate(schedule))
    return optax.chain(direction, optax.trace(decay=momentum), optax.scale(-1.0))


def clip_per_tensor(max_norm: float, eps: float = 1e-6) -> optax.GradientTransformation:
    """DINO's ``clip_gradients``: each tensor g <- g c / (||g|| + eps) where that factor is < 1, else g."""

    def update_fn(updates, state, params=None):
        del params

        def clip_one(g, k):
            coef = max_norm / (_norm(g, k) + eps)
            return jnp.where(coef < 1.0, g * coef, g).astype(g.dtype)

        return jax.tree.map(clip_one, updates, stacked_axes(updates)), state

    return optax.GradientTransformation(optax.init_empty_state, update_fn)


def base_transform(
    config, schedule: optax.Schedule, mask, weight_decay: ScalarOrSchedule | None = None
) -> optax.GradientTransformation:
    """The configured optimizer for one parameter group, driven by ``schedule`` (lr_t) and ``weight_decay`` (wd_t;
    ``optimizer.weight_decay`` when None)."""
    o = config.optimizer
    wd = o.weight_decay if weight_decay is None else weight_decay
    wd_mask = mask if o.exclude_bias_and_norm else None
    if o.name == 'lars':
        adapt = mask if o.exclude_bias_and_norm else (lambda p: jax.tree.map(lambda _: True, p))
        return lars(schedule, wd, o.momentum, o.lars_eta, adapt, clip=o.lars_clip, variant=o.lars_variant)
    if o.name == 'sgd':
        return optax.chain(optax.add_decayed_weights(wd, wd_mask), optax.sgd(schedule, momentum=o.momentum))
    if o.name == 'adamw':
        return optax.adamw(schedule, b1=o.b1, b2=o.b2, eps=o.eps, weight_decay=wd, mask=wd_mask)
    raise ValueError(f'unknown optimizer.name {o.name!r}; known: lars, sgd, adamw')


def validate(config) -> None:
    """ValueError naming the key for an optimizer setting out of its range."""
    o = config.optimizer
    if o.name not in ('lars', 'sgd', 'adamw'):
        raise ValueError(f'unknown optimizer.name {o.name!r}; known: lars, sgd, adamw')
    if o.lars_variant not in LARS_VARIANTS:
        raise ValueError(f'optimizer.lars_variant must be one of {", ".join(LARS_VARIANTS)}, got {o.lars_variant!r}')
    if o.get('warmup_schedule', 'optax') not in WARMUP_SCHEDULES:
        raise ValueError(
            f'optimizer.warmup_schedule must be one of {", ".join(WARMUP_SCHEDULES)}, got {o.warmup_schedule!r}'
        )
    if o.clip_grad_mode not in CLIP_GRAD_MODES:
        raise ValueError(
            f'optimizer.clip_grad_mode must be one of {", ".join(CLIP_GRAD_MODES)}, got {o.clip_grad_mode!r}'
        )
    if not o.clip_grad >= 0:
        raise ValueError(f'optimizer.clip_grad must be >= 0 (0 = no clipping), got {o.clip_grad!r}')
    if not o.weight_decay >= 0:
        raise ValueError(f'optimizer.weight_decay must be >= 0, got {o.weight_decay!r}')


def _freeze_table(freeze_steps: Mapping[str, int] | None) -> dict[tuple[str, ...], int]:
    """{'head/last_layer': N} -> {('head', 'last_layer'): N}, checked; prefixes with N = 0 dropped."""
    table = {}
    for prefix, steps in dict(freeze_steps or {}).items():
        parts = tuple(p for p in str(prefix).split('/') if p)
        if not parts:
            raise ValueError(f'freeze_steps: empty parameter path {prefix!r}')
        if isinstance(steps, bool) or not isinstance(steps, numbers.Integral) or steps < 0:
            raise ValueError(f'freeze_steps[{prefix!r}] must be an integer number of steps >= 0, got {steps!r}')
        if steps > 0:
            table[parts] = int(steps)
    return table


def _path(keys) -> tuple[str, ...]:
    return tuple(str(getattr(k, 'key', getattr(k, 'name', getattr(k, 'idx', k)))) for k in keys)


def _frozen_for(path: tuple[str, ...], table: dict[tuple[str, ...], int]) -> int:
    """Steps for the longest prefix in ``table`` that ``path`` starts with (0: none)."""
    matches = [p for p in table if path[: len(p)] == p]
    return table[max(matches, key=len)] if matches else 0


def _shifted(value: ScalarOrSchedule, offset: int) -> ScalarOrSchedule:
    return (lambda count: value(count + offset)) if callable(value) else value


def create_optimizer(
    config,
    total_steps: int,
    steps_per_epoch: int,
    frozen_heads: tuple[str, ...] = (),
    freeze_steps: Mapping[str, int] | None = None,
) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """-> (optimizer over the whole params tree, the main learning-rate schedule for logging).

    Groups are assigned from the params tree when the optimizer is initialised; call ``check_param_groups`` once the
    params exist to catch a misspelt head name or path.

    ``freeze_steps`` maps a '/'-joined param-path prefix ('head/last_layer') to N: while the optimizer's step count
    is < N those params get a zero update and their optimizer state (momentum, Adam moments, Adam's step, weight
    decay) is left as it was (``optax.transforms.conditionally_mask``), as PyTorch skips a parameter whose grad is
    None (DINO's ``cancel_gradients_last_layer``). A path under several prefixes takes the longest. Their
    learning-rate and weight-decay schedules are shifted by N so they stay indexed by the global step, and Adam's
    bias correction counts from their first real step, as PyTorch's per-parameter ``state['step']`` does. What
    differs from PyTorch: gradient clipping happens before the freeze (as in DINO, whose ``clip_gradients`` runs
    before ``cancel_gradients_last_layer``), so with ``clip_grad_mode = 'global'`` the frozen grads count in the
    global norm; every group keeps its own step counters in the state (all equal to the global step but the frozen
    group's inner ones, N behind).
    """
    o = config.optimizer
    validate(config)
    peak = learning_rate(config)
    warmup = o.warmup_steps if o.warmup_steps >= 0 else int(round(o.warmup_epochs * steps_per_epoch))
    schedule = warmup_cosine(peak, total_steps, warmup, o.warmup_init_lr, o.final_lr, o.get('warmup_schedule', 'optax'))
    wd = weight_decay_schedule(config, total_steps)
    constant = tuple(o.constant_lr_heads)
    frozen_heads = tuple(frozen_heads)
    table = _freeze_table(freeze_steps)

    schedules = {'main': schedule, 'constant': optax.constant_schedule(peak)}
    transforms = {name: base_transform(config, s, decay_mask, wd) for name, s in schedules.items()}
    transforms['frozen'] = optax.set_to_zero()
    for n in sorted(set(table.values())):
        for name, s in schedules.items():
            inner = base_transform(config, _shifted(s, n), decay_mask, _shifted(wd, n))
            transforms[f'{name}@{n}'] = optax.transforms.conditionally_mask(inner, lambda step, n=n: step >= n)

    def label(head: str, keys) -> str:
        if head in frozen_heads:
            return 'frozen'
        group = 'constant' if head in constant else 'main'
        n = _frozen_for((head,) + _path(keys), table)
        return f'{group}@{n}' if n else group

    def labels(params):
        _check_freeze_paths(params, table)
        return {
            head: jax.tree_util.tree_map_with_path(lambda keys, _, h=head: label(h, keys), sub)
            for head, sub in params.items()
        }

    tx = optax.multi_transform(transforms, labels)
    if o.clip_grad > 0:
        if o.clip_grad_mode == 'per_tensor':
            clip = clip_per_tensor(o.clip_grad)
        else:
            clip = optax.masked(
                optax.clip_by_global_norm(o.clip_grad),
                lambda p: {h: jax.tree.map(lambda _, h=h: h not in frozen_heads, sub) for h, sub in p.items()},
            )
        tx = optax.chain(clip, tx)
    return tx, schedule


def _check_freeze_paths(params, table) -> None:
    paths = [_path(keys) for keys, _ in jax.tree_util.tree_flatten_with_path(params)[0]]
    unknown = ['/'.join(p) for p in table if not any(path[: len(p)] == p for path in paths)]
    if unknown:
        raise ValueError(
            f'freeze_steps names parameter paths {unknown} that the model does not have; '
            f'its parameter groups are {sorted(params)}'
        )


def check_param_groups(
    config, params, frozen_heads: tuple[str, ...] = (), freeze_steps: Mapping[str, int] | None = None
) -> None:
    """Every head named by an optimizer group, and every ``freeze_steps`` prefix, must exist in ``params``."""
    unknown = [h for h in tuple(config.optimizer.constant_lr_heads) + tuple(frozen_heads) if h not in params]
    if unknown:
        raise ValueError(
            f'optimizer groups name heads {unknown} that the model does not have; '
            f'its parameter groups are {sorted(params)} (config key "optimizer.constant_lr_heads")'
        )
    _check_freeze_paths(params, _freeze_table(freeze_steps))
