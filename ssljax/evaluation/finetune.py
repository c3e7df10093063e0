"""Full fine-tuning: ``config.evals.<name>.type = 'finetune'``, any encoder (ViT or ResNet).

The recipe of MAE's ``main_finetune.py`` (BEiT's), reduced to what a small run needs:
  * model: the pretrained encoder (``network``) and a linear head on its pooled features (``'pooled'``: [CLS] or the
    mean of the patch tokens for a ViT, the global average for a ResNet), head kernel N(0, (2e-5)^2), bias 0;
    everything is trained; ResNet BatchNorm runs in train mode with its running statistics updated.
  * optimizer: AdamW (betas 0.9, 0.999, epsilon ``eps``: 1e-8, torch's default, as the reference) with peak
    learning rate lr x batch_size / 256, a linear warm-up over ``warmup_epochs`` then a per-step cosine to 0, weight
    decay ``weight_decay`` on every weight with ndim > 1 except cls_token / pos_embed / mask_token (MAE's
    ``param_groups_lrd``: biases and norms are not decayed).
  * layer-wise learning-rate decay (:func:`layer_scales`): with L = number of layers + 1 and layer id l(w) in
    0 .. L (the embedding 0, block / stage i is i, the final norm and head L), w's update (the decoupled decay
    included, as in the reference's per-group lr) is multiplied by layer_decay^(L - l(w)).
  * drop-path ``drop_path`` on a ViT's blocks (``vit.ViT.drop_path_rate``); a backbone without it (ResNet) needs 0.
  * loss: cross-entropy with label smoothing ``label_smoothing``; views: random resized crop with scale
    (``crop_min_scale``, 1) and flip ``flip_prob`` at the evaluation size, normalised as the evaluation view.
    Not reproduced (they matter at ImageNet scale): RandAugment, mixup / cutmix, random erasing, EMA.
Test top-1 of the final model on the evaluation view is reported as ``top1`` (and the last epoch's mean training
loss as ``train_loss``). Shuffles, crops, drop-path and head init come from ``config.seed``. The batch is sharded over
the run's devices (``batch_size`` rounded down to a multiple of them); single-host only. Parameters, batch statistics
and AdamW moments take the run's ``sharding_strategy`` on its mesh (copied device to device into it; under fsdp
the encoder is never whole on one device), and the gradients their parameters' sharding.
"""

from __future__ import annotations

import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from ssljax import config_lib, parallel
from ssljax.config_lib import ConfigError
from ssljax.data import augment
from ssljax.evaluation.context import read_rows
from ssljax.evaluation.framework import Evaluator, register_evaluator

NO_DECAY = ('cls_token', 'pos_embed', 'mask_token')


def layer_id(path: tuple[str, ...], num_layers: int) -> int:
    """Layer of a parameter (path of names from the encoder root, or ('head', ...)) for layer-wise lr decay.

    ViT: patch_embed, cls_token, pos_embed, mask_token -> 0; block{i} -> i; anything else (final norm, head) ->
    num_layers. ResNet: stem_* -> 0; stage{s}_* -> s; anything else -> num_layers.
    """
    top = path[0]
    if top == 'head':
        return num_layers
    if top in ('patch_embed', 'cls_token', 'pos_embed', 'mask_token') or top.startswith('stem'):
        return 0
    match = re.match(r'(?:block|stage)(\d+)', top)
    return int(match.group(1)) if match else num_layers


def count_layers(encoder_params: dict) -> int:
    """Blocks of a ViT or stages of a ResNet (the largest i of block{i} / stage{i}_*), + 1."""
    ids = [int(m.group(1)) for m in (re.match(r'(?:block|stage)(\d+)', k) for k in encoder_params) if m]
    if 'blocks' in encoder_params:  # a scanned ViT: blocks 1 .. N stacked on the leading axis
        ids.append(jax.tree.leaves(encoder_params['blocks'])[0].shape[0])
    return max(ids, default=0) + 1


def layer_scales(params: dict, layer_decay: float) -> dict:
    """{'encoder': ..., 'head': ...} -> the same tree of float scales layer_decay^(L - layer_id), L = count_layers."""
    num_layers = count_layers(params['encoder'])

    def scale(path, leaf):
        names = tuple(getattr(p, 'key', str(p)) for p in path)
        names = names[1:] if names[0] == 'encoder' else names
        if names[0] == 'blocks':  # scanned ViT: block i + 1 is row i of the stacked leaf
            ids = np.arange(1, leaf.shape[0] + 1, dtype=np.float64)
            return (float(layer_decay) ** (num_layers - ids)).astype(np.float32).reshape((-1,) + (1,) * (leaf.ndim - 1))
        return float(layer_decay) ** (num_layers - layer_id(names, num_layers))

    return jax.tree_util.tree_map_with_path(scale, params)


def decay_mask(params: dict) -> dict:
    """True for weights that take weight decay: ndim > 1 and not a token / position table."""

    def decays(path, p):
        names = [getattr(k, 'key', str(k)) for k in path]
        stacked = int(names[:2] == ['encoder', 'blocks'] or names[:1] == ['blocks'])  # scanned ViT: per layer
        return p.ndim - stacked > 1 and not any(n in NO_DECAY for n in names)

    return jax.tree_util.tree_map_with_path(decays, params)


def scale_by_tree(scales: dict) -> optax.GradientTransformation:
    """Multiplies each update leaf by its (static) scale."""

    def update(updates, state, params=None):
        return jax.tree.map(lambda u, s: u * s, updates, scales), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def smoothed_cross_entropy(logits: jax.Array, labels: jax.Array, smoothing: float) -> jax.Array:
    """mean_i sum_c -q_ic log softmax(logits_i)_c with q = (1 - eps) onehot(y) + eps / C (timm's
    LabelSmoothingCrossEntropy)."""
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    c = logits.shape[-1]
    q = (1.0 - smoothing) * jax.nn.one_hot(labels, c) + smoothing / c
    return jnp.mean(-jnp.sum(q * logp, axis=-1))


@register_evaluator
class Finetune(Evaluator):
    """Full fine-tuning with AdamW, layer-wise lr decay and drop-path (see the module docstring)."""

    type = 'finetune'
    defaults = dict(
        epochs=20,
        lr=1e-3,
        batch_size=128,
        weight_decay=0.05,
        layer_decay=0.75,
        drop_path=0.1,
        warmup_epochs=1.0,
        label_smoothing=0.1,
        crop_min_scale=0.08,
        flip_prob=0.5,
        max_train_examples=0,
        eps=1e-8,
    )

    @classmethod
    def check(cls, settings):
        for key in ('epochs', 'lr', 'batch_size'):
            if not settings[key] > 0:
                return key, f'must be > 0, got {settings[key]!r}'
        for key, lo, hi in (('layer_decay', 0.0, 1.0), ('crop_min_scale', 0.0, 1.0)):
            if not lo < settings[key] <= hi:
                return key, f'must be in ({lo:g}, {hi:g}], got {settings[key]!r}'
        for key in ('drop_path', 'label_smoothing'):
            if not 0.0 <= settings[key] < 1.0:
                return key, f'must be in [0, 1), got {settings[key]!r}'
        if not 0.0 <= settings.flip_prob <= 1.0:
            return 'flip_prob', f'must be in [0, 1], got {settings.flip_prob!r}'
        for key in ('weight_decay', 'warmup_epochs', 'max_train_examples', 'eps'):
            if settings[key] < 0:
                return key, f'must be >= 0, got {settings[key]!r}'
        return None

    def _encoder(self):
        encoder, rate = self.ctx.encoder, float(self.settings.drop_path)
        if rate > 0:
            if not hasattr(encoder, 'drop_path_rate'):
                raise ConfigError(
                    f'config key "evals.{self.name}.drop_path": backbone {type(encoder).__name__} has '
                    f'no drop-path; set it to 0'
                )
            encoder = encoder.clone(drop_path_rate=rate)
        return encoder

    def run(self, state, step):
        session = self.session(state)
        losses = []
        for epoch in range(int(self.settings.epochs)):
            losses = session.train_epoch(epoch)
        return {'top1': session.test_top1(), 'train_loss': float(np.mean(losses)) if losses else float('nan')}

    def session(self, state) -> 'FinetuneSession':
        """The fine-tuning model, optimizer and compiled step for ``state``'s encoder, placed on the run's mesh."""
        ctx, s = self.ctx, self.settings
        mesh, n_dev = ctx.mesh, ctx.mesh.devices.size
        encoder = self._encoder()
        enc_vars = self.variables(state)
        labels = np.asarray(ctx.train.labels, np.int32)
        rows = np.flatnonzero(labels >= 0)
        rng = np.random.default_rng(ctx.seed)
        if s.max_train_examples and rows.size > s.max_train_examples:
            rows = np.sort(rng.choice(rows, s.max_train_examples, replace=False))
        bs = min(int(s.batch_size), rows.size)
        bs = max(n_dev, bs // n_dev * n_dev)
        steps_per_epoch = max(1, rows.size // bs)
        total = int(s.epochs) * steps_per_epoch
        warmup = int(round(s.warmup_epochs * steps_per_epoch))
        peak = float(s.lr) * bs / 256.0
        schedule = (
            optax.warmup_cosine_decay_schedule(0.0, peak, max(warmup, 0), max(total, warmup + 1), 0.0)
            if warmup > 0
            else optax.cosine_decay_schedule(peak, total)
        )

        key = jax.random.key(ctx.seed)
        head = nn.Dense(ctx.num_classes, kernel_init=nn.initializers.normal(2e-5), name='head')
        head_params = head.init(jax.random.fold_in(key, 1), jnp.zeros((1, encoder.feature_dim)))['params']
        params = {'encoder': enc_vars['params'], 'head': head_params}
        batch_stats = enc_vars.get('batch_stats', {})
        tx = optax.chain(
            optax.adamw(
                schedule,
                b1=0.9,
                b2=0.999,
                eps=float(s.eps),
                weight_decay=float(s.weight_decay),
                mask=decay_mask(params),
            ),
            scale_by_tree(layer_scales(params, float(s.layer_decay))),
        )
        view = augment.ViewConfig(
            size=ctx.eval_size,
            crop_scale=(float(s.crop_min_scale), 1.0),
            flip_prob=float(s.flip_prob),
            jitter_prob=0.0,
            grayscale_prob=0.0,
            blur_prob=0.0,
            solarize_prob=0.0,
            mean=ctx.mean,
            std=ctx.std,
        )
        smoothing = float(s.label_smoothing)
        has_bn = bool(jax.tree.leaves(batch_stats))

        def forward(params, batch_stats, x, train, rng=None):
            variables = {'params': params['encoder']}
            if has_bn:
                variables['batch_stats'] = batch_stats
            kwargs = {'rngs': {'dropout': rng}} if rng is not None else {}
            if train and has_bn:
                out, upd = encoder.apply(variables, x, train=True, mutable=['batch_stats'], **kwargs)
                batch_stats = upd['batch_stats']
            else:
                out = encoder.apply(variables, x, train=train, **kwargs)
            return head.apply({'params': params['head']}, out['pooled']), batch_stats

        # the run's sharding strategy (config.sharding_strategy): on an fsdp mesh the encoder, its AdamW moments and
        # the head are split as in pretraining; replicated on the default mesh
        shardings = parallel.tree_shardings(
            {'params': params, 'batch_stats': batch_stats, 'opt_state': jax.eval_shape(tx.init, params)},
            mesh,
            tuple(config_lib.scale_setting(ctx.config, 'sharding_strategy')),
            float(config_lib.scale_setting(ctx.config, 'sharding_min_size_mb')),
        )

        def train_step(params, batch_stats, opt_state, images, y, step_key):
            aug_key, drop_key = jax.random.split(step_key)
            x = augment.augment_views(images, aug_key, (view,))[0]

            def loss_fn(p):
                logits, new_stats = forward(p, batch_stats, x, True, drop_key)
                return smoothed_cross_entropy(logits, y, smoothing), new_stats

            (loss, new_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
            grads = jax.lax.with_sharding_constraint(grads, shardings['params'])  # reduce-scattered under fsdp
            updates, opt_state = tx.update(grads, opt_state, params)
            return optax.apply_updates(params, updates), new_stats, opt_state, loss

        size, mean, std = ctx.eval_size, ctx.mean, ctx.std

        def predict(trained, images):
            x = augment.eval_view(images, size, mean, std)
            return jnp.argmax(forward(*trained, x, False)[0], axis=-1)

        # Copies on the devices, straight into those shardings (the run's buffers are not donated; nothing is
        # gathered whole onto one device or the host); the optimizer state is created sharded.
        copy = jax.jit(
            lambda t: jax.tree.map(jnp.copy, t), out_shardings=(shardings['params'], shardings['batch_stats'])
        )
        params, batch_stats = copy((params, batch_stats))
        opt_state = jax.jit(tx.init, out_shardings=shardings['opt_state'])(params)
        out = (shardings['params'], shardings['batch_stats'], shardings['opt_state'], parallel.replicated(mesh))
        step_fn = jax.jit(train_step, donate_argnums=(0, 1, 2), out_shardings=out)
        return FinetuneSession(self, (params, batch_stats, opt_state), step_fn, predict, rows, labels, bs, key, rng)


class FinetuneSession:
    """One fine-tuning run in progress: ``trained`` = (params, batch_stats, opt_state) on the mesh, the compiled
    step, the training rows and the numpy rng of the shuffles (seeded by ``config.seed``)."""

    def __init__(self, evaluator, trained, step_fn, predict, rows, labels, batch_size, key, rng):
        self.ctx, self.trained, self.step_fn, self.predict = evaluator.ctx, trained, step_fn, predict
        self.rows, self.labels, self.batch_size, self.key, self.rng = rows, labels, batch_size, key, rng
        self.steps_per_epoch = max(1, rows.size // batch_size)

    def train_epoch(self, epoch: int, max_steps: int = 0) -> list[float]:
        """One epoch (its first ``max_steps`` steps when > 0): a fresh shuffle, then steps; -> the step losses."""
        sharded = parallel.batch_sharded(self.ctx.mesh)
        order, bs = self.rng.permutation(self.rows), self.batch_size
        losses = []
        for i in range(min(self.steps_per_epoch, max_steps or self.steps_per_epoch)):
            idx = np.sort(order[i * bs : (i + 1) * bs])
            images = jax.device_put(read_rows(self.ctx.train.images, idx), sharded)
            y = jax.device_put(self.labels[idx], sharded)
            step_key = jax.random.fold_in(self.key, 1000 + epoch * self.steps_per_epoch + i)
            *self.trained, loss = self.step_fn(*self.trained, images, y, step_key)
            losses.append(loss)
        return [float(v) for v in losses]

    def test_top1(self) -> float:
        """Top-1 of the current model on the test split, in the evaluators' blocks (padded, sharded, resident when
        it fits: shared with kNN / linear)."""
        ctx = self.ctx
        test_labels = np.asarray(ctx.test.labels, np.int32)
        params, batch_stats, _ = self.trained
        preds = ctx.gather_rows(
            ctx.map_blocks(self.predict, (params, batch_stats), ctx.test.images, key='test'), len(test_labels)
        )
        return float(np.mean(preds == test_labels))
