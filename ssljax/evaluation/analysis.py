"""Analysis evaluators: object- vs part-level probes, layer-wise probes and few-label probes of a frozen encoder.

Three evaluator types (chosen by name in ``config.evals``, like ``knn`` or ``linear``) and the pure functions they
are built on:

* ``part_probe`` (`PartProbe`): linear top-1 on whole images and on random parts of them (`part_boxes`).
* ``layer_probe`` (`LayerProbe`): linear top-1 of every ResNet stage / every ViT block (`layer_features`, which reads
  the intermediate outputs through Flax's ``capture_intermediates``, so no model file knows about it).
* ``few_label`` (`FewLabel`): linear top-1 with 1% / 10% of the train labels, balanced per class
  (`balanced_subset`).

Every probe is `linear_probe.train_linear_probe` (standardised features, SGD + momentum, cosine schedule) with the
evaluator's ``epochs``, ``lr`` and ``batch_size``, seeded by ``config.seed`` as the ``linear`` evaluator is, so its
whole-image numbers equal that evaluator's under the same settings. Train examples labelled < 0 (unlabeled) are left
out of every probe.
"""

from __future__ import annotations

import os
import re
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from ssljax.evaluation import linear_probe
from ssljax.evaluation.context import SPLITS
from ssljax.evaluation.framework import Evaluator, register_evaluator

# ---------------------------------------------------------------------------------------------------- random parts

_PART_STREAM = 0x9A27  # mixed into the part boxes' seed, so parts never share draws with any other seeded stream


def _seed_sequence(seed) -> np.random.SeedSequence:
    """An int, a sequence of ints or a JAX PRNG key (typed or raw uint32) -> a NumPy SeedSequence."""
    if isinstance(seed, (int, np.integer)):
        return np.random.SeedSequence(int(seed))
    if isinstance(seed, jax.Array):
        if jnp.issubdtype(seed.dtype, jax.dtypes.prng_key):
            seed = jax.random.key_data(seed)
        return np.random.SeedSequence([int(v) for v in np.asarray(seed).ravel()])
    return np.random.SeedSequence([int(v) for v in seed])


def part_boxes(
    seed, n: int, height: int, width: int, area: Sequence[float] = (0.1, 0.3), ratio: Sequence[float] = (3 / 4, 4 / 3)
) -> np.ndarray:
    """``n`` random part boxes of an ``height`` x ``width`` image -> float32 [n, 4] rows (top, left, h, w).

    Box i takes four draws u_0..u_3 ~ U[0, 1) (row i of one [n, 4] draw, so box i does not depend on n):
        a = area_lo + (area_hi - area_lo) u_0                         (fraction of the image's area)
        r = exp(log ratio_lo + (log ratio_hi - log ratio_lo) u_1),    clipped to [a W / H, W / (a H)]
        h = sqrt(a H W / r),   w = sqrt(a H W r)                      (so h w = a H W and w / h = r)
        top = u_2 (H - h),     left = u_3 (W - w)
    The clip keeps the box inside the image (h <= H, w <= W) without changing its area; it only moves r out of the
    ratio range for images whose own aspect is far outside it. Boxes are continuous (not pixel-aligned): the crop is
    resampled by `augment.resized_crop`. ``seed``: an int, a tuple of ints or a JAX key; the same seed gives the same
    boxes.
    """
    lo, hi = (float(v) for v in area)
    r_lo, r_hi = (float(v) for v in ratio)
    if not 0.0 < lo <= hi <= 1.0:
        raise ValueError(f'part_boxes: area must satisfy 0 < lo <= hi <= 1, got {tuple(area)}')
    if not 0.0 < r_lo <= r_hi:
        raise ValueError(f'part_boxes: ratio must satisfy 0 < lo <= hi, got {tuple(ratio)}')
    if n < 0 or height < 1 or width < 1:
        raise ValueError(f'part_boxes: need n >= 0 and a positive image size, got n={n}, {height}x{width}')
    u = np.random.default_rng(_seed_sequence(seed)).random((int(n), 4))
    a = lo + (hi - lo) * u[:, 0]
    r = np.exp(np.log(r_lo) + (np.log(r_hi) - np.log(r_lo)) * u[:, 1])
    r = np.clip(r, a * width / height, width / (a * height))
    h = np.sqrt(a * height * width / r)
    w = np.sqrt(a * height * width * r)
    h, w = np.minimum(h, height), np.minimum(w, width)  # round-off only
    top, left = u[:, 2] * (height - h), u[:, 3] * (width - w)
    return np.stack([top, left, h, w], axis=1).astype(np.float32)


def crop_parts(images: jax.Array, boxes: jax.Array, size: int, mean, std) -> jax.Array:
    """uint8 [B, H, W, 3] images and float boxes [B, P, 4] -> float32 [B * P, size, size, 3] normalised parts.

    Part (b, p) is ``augment.resized_crop(images[b] / 255, boxes[b, p], size)`` (antialiased bilinear resampling
    of the box to size x size), then (x - mean) / std, as the evaluation view normalises whole images.
    """
    from ssljax.data import augment

    x = images.astype(jnp.float32) / 255.0
    crops = jax.vmap(lambda im, bx: jax.vmap(lambda b: augment.resized_crop(im, b, size))(bx))(x, boxes)
    crops = crops.reshape((-1, size, size, crops.shape[-1]))
    return augment.normalize(crops, mean, std)


# ------------------------------------------------------------------------------------------ few-label subsets


def balanced_subset(labels, fraction: float, seed: int = 0) -> np.ndarray:
    """Indices (sorted, int64) of a class-balanced random subset of about ``fraction`` of the labelled examples.

    With N labelled examples (label >= 0) of C classes: k = max(C, round(fraction N)) examples in all, k // C of
    every class and one more of k mod C classes chosen at random, so per-class counts differ by at most one (at
    least one example per class). A class with fewer examples than its share gives all it has (the shortfall is not
    moved to other classes). The choice is a deterministic function of (labels, fraction, seed).
    """
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(f'balanced_subset: labels must be 1-D, got shape {labels.shape}')
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f'balanced_subset: fraction must be in (0, 1], got {fraction}')
    labelled = labels >= 0
    classes = np.unique(labels[labelled])
    if classes.size == 0:
        raise ValueError('balanced_subset: no labelled example (every label is < 0)')
    total = max(classes.size, int(round(fraction * int(labelled.sum()))))
    base, extra = divmod(total, classes.size)
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0xFE71AB]))
    quota = np.full(classes.size, base)
    quota[rng.permutation(classes.size)[:extra]] += 1
    chosen = [rng.permutation(np.flatnonzero(labels == c))[:q] for c, q in zip(classes, quota)]
    return np.sort(np.concatenate(chosen)).astype(np.int64)


# ------------------------------------------------------------------------------------------- intermediate layers

# Module names of the layers read: ResNet blocks 'stage<s>_block<b>' (the last block of stage s is "stage s") and ViT
# blocks 'block<i>' (ssljax/models/resnet.py and vit.py).
_STAGE = re.compile(r'stage(\d+)_block(\d+)')
_BLOCK = re.compile(r'block(\d+)')
TOKEN_POOLS = ('mean', 'cls')


def _is_layer(module, method_name: str) -> bool:
    name = module.name or ''
    return method_name == '__call__' and bool(_STAGE.fullmatch(name) or _BLOCK.fullmatch(name))


def layer_order(name: str) -> tuple:
    """Sort key of layer names: 'stage1' < 'stage2' < ... < 'block1' < 'block2' < ... < 'block12'."""
    match = re.fullmatch(r'(stage|block)(\d+)', name)
    if match is None:
        raise ValueError(f'not a layer name: {name!r}')
    return (0 if match.group(1) == 'stage' else 1, int(match.group(2)))


def pool_layer(x: jax.Array, token_pool: str = 'mean') -> jax.Array:
    """A layer's output -> float32 [B, D]: conv maps [B, h, w, C] by the spatial mean; token sequences [B, 1 + N, D]
    (token 0 is [CLS], as in ssljax's ViT) by the mean of the N patch tokens ('mean') or the [CLS] token ('cls')."""
    x = x.astype(jnp.float32)
    if x.ndim == 4:
        return jnp.mean(x, axis=(1, 2))
    if x.ndim == 3:
        return x[:, 0] if token_pool == 'cls' else jnp.mean(x[:, 1:], axis=1)
    if x.ndim == 2:
        return x
    raise ValueError(f'cannot pool a layer output of shape {x.shape}')


def layer_features(encoder, variables: dict, x: jax.Array, token_pool: str = 'mean') -> dict[str, jax.Array]:
    """Pooled outputs of the encoder's layers on float images x [B, S, S, 3] (eval mode) -> {name: float32 [B, D]}.

    Layers: the output of the last block of every ResNet stage ('stage1', 'stage2', ...: modules named
    'stage<s>_block<b>', b the largest) and of every ViT block ('block1', ...: modules named 'block<i>'); order them
    with ``sorted(..., key=layer_order)``. The outputs are read with Flax's ``capture_intermediates`` (a filter on
    module names), so the model code is unchanged; each is pooled by `pool_layer`. Raises ValueError when the
    encoder has no such module.
    """
    if token_pool not in TOKEN_POOLS:
        raise ValueError(f'token_pool must be one of {TOKEN_POOLS}, got {token_pool!r}')
    _, captured = encoder.apply(variables, x, train=False, capture_intermediates=_is_layer, mutable=['intermediates'])
    found: dict[str, tuple[int, jax.Array]] = {}
    for path, value in _flatten(captured.get('intermediates', {})):
        if path[-1] != '__call__' or len(path) < 2:
            continue
        module = path[-2]
        output = value[0] if isinstance(value, tuple) else value
        stage = _STAGE.fullmatch(module)
        if stage is not None:
            name, block = f'stage{int(stage.group(1))}', int(stage.group(2))
            if name not in found or block > found[name][0]:
                found[name] = (block, output)
        else:
            found[f'block{int(_BLOCK.fullmatch(module).group(1))}'] = (0, output)
    if not found:
        raise ValueError(
            f'{type(encoder).__name__} has no layer to probe (modules named stage<s>_block<b> or block<i>)'
        )
    return {name: pool_layer(found[name][1], token_pool) for name in sorted(found, key=layer_order)}


def _flatten(tree, prefix=()):
    """(path, leaf) pairs of a nested dict, where a tuple of outputs (what capture_intermediates stores) is a leaf."""
    if isinstance(tree, dict) or hasattr(tree, 'items'):
        for key, value in tree.items():
            yield from _flatten(value, prefix + (key,))
    else:
        yield prefix, tree


# ------------------------------------------------------------------------------------------------- evaluators


def _check_probe(settings):
    for key in ('epochs', 'lr', 'batch_size'):
        if not settings[key] > 0:
            return key, f'must be > 0, got {settings[key]!r}'
    return None


def _pair(settings, key, lo_open: float, hi: float | None):
    value = tuple(settings[key])
    if len(value) != 2 or any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in value):
        return key, f'must be two numbers (lo, hi), got {value!r}'
    if not (lo_open < value[0] <= value[1] and (hi is None or value[1] <= hi)):
        upper = f' <= {hi:g}' if hi is not None else ''
        return key, f'must satisfy {lo_open:g} < lo <= hi{upper}, got {value!r}'
    return None


def _probe(settings, seed, x_train, y_train, x_test, y_test, num_classes) -> float:
    keep = y_train >= 0
    result = linear_probe.train_linear_probe(
        x_train[keep],
        y_train[keep],
        x_test,
        y_test,
        num_classes,
        epochs=settings.epochs,
        batch_size=settings.batch_size,
        lr=settings.lr,
        seed=seed,
    )
    return float(result['top1'])


def _put_rows(array: np.ndarray, sharding) -> jax.Array:
    return jax.make_array_from_callback(array.shape, sharding, lambda index: array[index])


@register_evaluator
class PartProbe(Evaluator):
    """Object- vs part-level linear probes of the same frozen encoder.

    A *part* of an image is a random box of ``area`` = (lo, hi) of its area (uniform) and aspect w / h in ``ratio``
    (log-uniform), placed uniformly inside the stored image (`part_boxes`), resampled to the evaluation size and
    normalised as the evaluation view (`crop_parts`); it carries its image's label. Each image gives
    ``parts_per_image`` parts, drawn from seed (``config.seed``, split): the same parts in training and in
    ``python -m ssljax.evaluate``, and raising ``parts_per_image`` keeps the parts drawn before.

    Protocol (each level trained and tested on its own kind of input):
      whole_top1: probe trained on the whole-image (evaluation-view) features of the train split, tested on those of
        the test split: the ``linear`` evaluator's number under the same epochs / lr / batch_size.
      part_top1: probe trained on the part features of the train split, tested on the part features of the test
        split.
    ``whole_top1 - part_top1`` is how much the representation depends on seeing the whole object.
    """

    type = 'part_probe'
    defaults = dict(area=(0.1, 0.3), ratio=(3 / 4, 4 / 3), parts_per_image=1, epochs=100, lr=0.1, batch_size=256)

    @classmethod
    def check(cls, settings):
        bad = _pair(settings, 'area', 0.0, 1.0) or _pair(settings, 'ratio', 0.0, None) or _check_probe(settings)
        if bad is None and settings.parts_per_image < 1:
            bad = 'parts_per_image', f'must be >= 1, got {settings.parts_per_image}'
        return bad

    def run(self, state, step):
        ctx = self.ctx
        train, test = self.features(state, 'train'), self.features(state, 'test')
        whole = _probe(self.settings, ctx.seed, train.host(), train.labels, test.host(), test.labels, ctx.num_classes)
        x_train, y_train = self.part_features(state, 'train')
        x_test, y_test = self.part_features(state, 'test')
        part = _probe(self.settings, ctx.seed, x_train, y_train, x_test, y_test, ctx.num_classes)
        return {'whole_top1': whole, 'part_top1': part}

    def boxes(self, split: str) -> np.ndarray:
        """float32 [N, parts_per_image, 4]: the part boxes of every image of ``split`` (see `part_boxes`)."""
        images = self.ctx.split(split).images
        n, height, width = images.shape[:3]
        p = self.settings.parts_per_image
        boxes = part_boxes(
            (self.ctx.seed, _PART_STREAM, SPLITS.index(split)),
            p * n,
            height,
            width,
            self.settings.area,
            self.settings.ratio,
        )
        return boxes.reshape(p, n, 4).transpose(1, 0, 2)  # part j of image i: box j n + i (more parts keep these)

    def part_features(self, state, split: str) -> tuple[np.ndarray, np.ndarray]:
        """-> (float32 [N * P, D] part features, int32 [N * P] labels); rows i P .. i P + P - 1 are image i's."""
        ctx = self.ctx
        data = ctx.split(split)
        boxes = self.boxes(split)
        n, p = boxes.shape[:2]
        bsz = ctx.batch_size
        padded = np.zeros((ctx.num_blocks(n) * bsz, p, 4), np.float32)
        padded[:, :, 2:] = data.images.shape[1:3]  # padding rows: the whole (zero) image
        padded[:n] = boxes
        outputs = ctx.map_blocks(
            self._parts_fn(),
            self.variables(state),
            data.images,
            key=split,
            extra=lambda j: _put_rows(padded[j * bsz : (j + 1) * bsz], ctx.block_sharding),
        )
        features = ctx.gather_rows(outputs, n)
        return features.reshape(n * p, -1), np.repeat(np.asarray(data.labels, np.int32), p)

    def _parts_fn(self):
        if not hasattr(self, '_fn'):
            encoder, size, mean, std = self.ctx.encoder, self.ctx.eval_size, self.ctx.mean, self.ctx.std

            def fn(variables, images, boxes):
                x = crop_parts(images, boxes, size, mean, std)
                pooled = encoder.apply(variables, x, train=False)['pooled'].astype(jnp.float32)
                return pooled.reshape(images.shape[0], boxes.shape[1], -1)  # leading axis: the block's rows

            self._fn = fn
        return self._fn


@register_evaluator
class LayerProbe(Evaluator):
    """Linear probe of every layer: layer i is ResNet stage i (the output of its last block) or ViT block i.

    Features (`layer_features`): the layer's output on the evaluation view, pooled by the spatial mean (conv maps)
    or, for ViT blocks, by the mean of the patch tokens (``token_pool='mean'``) or the [CLS] token ('cls'). Each
    layer gets its own probe (`linear_probe.train_linear_probe`: standardised features, so un-normalised
    intermediate tokens are fine), trained on the train split and tested on the test split.

    Values: ``layer<i>_top1`` for i = 1 .. L (L = number of stages or blocks). The layer names, feature widths and
    accuracies are also written to ``workdir/figures/<name>_layers_<step>.json`` with a plot
    ``<name>_layers_<step>.png``. For a ResNet the last layer is the pooled encoder output, so its top-1 equals the
    ``linear`` evaluator's under the same settings. All layers are encoded in one pass, so the host holds
    N x (sum of the layer widths) floats per split (ViT-B, 12 x 768, on 50,000 train images: 1.8 GB).
    """

    type = 'layer_probe'
    defaults = dict(token_pool='mean', epochs=100, lr=0.1, batch_size=256)

    @classmethod
    def check(cls, settings):
        if settings.token_pool not in TOKEN_POOLS:
            return 'token_pool', f'must be one of {", ".join(TOKEN_POOLS)}, got {settings.token_pool!r}'
        return _check_probe(settings)

    def run(self, state, step):
        ctx = self.ctx
        train = self.layer_features(state, 'train')
        test = self.layer_features(state, 'test')
        names = list(train)
        top1 = [
            _probe(self.settings, ctx.seed, train[name], ctx.train.labels, test[name], ctx.test.labels, ctx.num_classes)
            for name in names
        ]
        self._report(names, [train[n].shape[1] for n in names], top1, step)
        return {f'layer{i + 1}_top1': value for i, value in enumerate(top1)}

    def layer_features(self, state, split: str) -> dict[str, np.ndarray]:
        """{layer name: float32 [N, D_layer]} of ``split``, in depth order."""
        ctx = self.ctx
        data = ctx.split(split)
        outputs = ctx.map_blocks(self._layers_fn(), self.variables(state), data.images, key=split)
        names = sorted(outputs[0], key=layer_order)
        return {name: ctx.gather_rows([o[name] for o in outputs], len(data.labels)) for name in names}

    def _layers_fn(self):
        if not hasattr(self, '_fn'):
            from ssljax.data import augment

            encoder, size, mean, std = self.ctx.encoder, self.ctx.eval_size, self.ctx.mean, self.ctx.std
            pool = self.settings.token_pool

            def fn(variables, images):
                return layer_features(encoder, variables, augment.eval_view(images, size, mean, std), pool)

            self._fn = fn
        return self._fn

    def _report(self, names, dims, top1, step):
        path = self.figure_path('layers', step)
        if path is None:
            return
        from ssljax import logging_lib

        logging_lib.write_json(
            os.path.splitext(path)[0] + '.json',
            {
                'step': int(step),
                'layers': names,
                'dims': [int(d) for d in dims],
                'top1': top1,
                'token_pool': self.settings.token_pool,
                'network': self.ctx.resolve_network(self.network),
            },
        )
        from matplotlib.figure import Figure  # not pyplot: a notebook's backend stays as it is

        fig = Figure(figsize=(max(4.0, 0.45 * len(names) + 2), 3.2))
        ax = fig.subplots()
        ax.plot(range(1, len(names) + 1), top1, marker='o')
        ax.set_xticks(range(1, len(names) + 1), names, rotation=45 if len(names) > 6 else 0, fontsize=8)
        ax.set_ylabel('linear probe top-1')
        ax.set_title(f'{self.name}: top-1 by layer at step {step}', fontsize=9)
        ax.grid(True, alpha=0.3)
        fig.tight_layout()
        fig.savefig(path, dpi=100)


def fraction_tag(fraction: float) -> str:
    """0.01 -> '1pct', 0.1 -> '10pct', 0.005 -> '0p5pct' (result keys hold no dot)."""
    return f'{round(100 * float(fraction), 6):g}'.replace('.', 'p') + 'pct'


@register_evaluator
class FewLabel(Evaluator):
    """Linear probe trained on a few labels: for each f in ``fractions``, a class-balanced subset of f of the
    labelled train examples (`balanced_subset`: per-class counts equal up to one, at least one per class, seed
    ``seed + r`` for repeat r = 0 .. repeats - 1), the probe trained on its features and tested on the whole test
    split. The fraction is of the probe's training set (after ``eval.max_train_examples``).

    Values per fraction (tag `fraction_tag`: 0.01 -> 1pct): ``<tag>_top1`` (mean over repeats), ``<tag>_examples``
    (labels used by one subset) and, when ``repeats > 1``, ``<tag>_top1_std`` (population std over repeats).
    Full fine-tuning is ssljax/evaluation/finetune.py's.
    """

    type = 'few_label'
    defaults = dict(fractions=(0.01, 0.1), seed=0, repeats=1, epochs=100, lr=0.1, batch_size=256)

    @classmethod
    def check(cls, settings):
        fractions = tuple(settings.fractions)
        if not fractions or any(
            isinstance(f, bool) or not isinstance(f, (int, float)) or not 0 < f <= 1 for f in fractions
        ):
            return 'fractions', f'must be a non-empty tuple of numbers in (0, 1], got {fractions!r}'
        if len({fraction_tag(f) for f in fractions}) != len(fractions):
            return 'fractions', f'has repeated values: {fractions!r}'
        if settings.seed < 0:
            return 'seed', f'must be >= 0, got {settings.seed}'
        if settings.repeats < 1:
            return 'repeats', f'must be >= 1, got {settings.repeats}'
        return _check_probe(settings)

    def run(self, state, step):
        ctx = self.ctx
        train, test = self.features(state, 'train'), self.features(state, 'test')
        x_train, x_test = train.host(), test.host()
        out = {}
        for fraction in self.settings.fractions:
            tag, tops, count = fraction_tag(fraction), [], 0
            for r in range(self.settings.repeats):
                rows = balanced_subset(train.labels, float(fraction), self.settings.seed + r)
                count = rows.size
                tops.append(
                    _probe(
                        self.settings, ctx.seed, x_train[rows], train.labels[rows], x_test, test.labels, ctx.num_classes
                    )
                )
            out[f'{tag}_top1'] = float(np.mean(tops))
            out[f'{tag}_examples'] = float(count)
            if self.settings.repeats > 1:
                out[f'{tag}_top1_std'] = float(np.std(tops))
        return out
