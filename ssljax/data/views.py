"""Views and patch masks from the config: ``config.augment.views`` (data) -> ViewConfigs and MaskSpecs.

``views_from_config(config)`` reads the view recipe once, before anything compiles (every bad field is a
ConfigError naming its key); ``make_views`` draws the views and their masks inside the jitted step.
"""

from __future__ import annotations

import dataclasses

import jax

from ssljax.config_lib import ConfigError
from ssljax.data import augment


@dataclasses.dataclass(frozen=True)
class MaskSpec:
    """A per-sample random patch mask for one view: ``num_masked`` of ``num_patches`` patches of ``patch_size`` px."""

    num_patches: int
    num_masked: int
    patch_size: int


_VIEW_FIELDS = tuple(f.name for f in dataclasses.fields(augment.ViewConfig))
_VIEW_EXTRA = ('count', 'mask_ratio', 'mask_patch_size')


def views_from_config(config) -> tuple[tuple[augment.ViewConfig, ...], tuple[MaskSpec | None, ...]]:
    """``augment.views`` in ``augment.order`` -> (one ViewConfig per view, one MaskSpec or None per view).

    A view's ``size`` 0 means ``augment.size``; ``augment.blur_prob`` / ``augment.crop_min_scale`` >= 0 replace every
    view's value; ``count`` repeats an entry; ``mask_ratio`` > 0 draws a patch mask of ``mask_patch_size`` px patches
    (0: ``model.patch_size``) with round(ratio x patches) masked per sample.
    """
    a = config.augment
    order, names = tuple(a.order), tuple(a.views.keys())
    if sorted(order) != sorted(names):
        raise ConfigError(
            f'config key "augment.order" {order} must list each of augment.views {tuple(sorted(names))} exactly once'
        )
    views, masks = [], []
    for name in order:
        entry, key = a.views[name], f'augment.views.{name}'
        unknown = sorted(set(entry.keys()) - set(_VIEW_FIELDS) - set(_VIEW_EXTRA))
        if unknown:
            raise ConfigError(
                f'unknown config key "{key}.{unknown[0]}"; a view has: {", ".join(_VIEW_FIELDS + _VIEW_EXTRA)}'
            )
        fields = {f: entry[f] for f in _VIEW_FIELDS if f in entry}
        fields['size'] = entry.get('size', 0) or a.size
        if a.blur_prob >= 0:
            fields['blur_prob'] = a.blur_prob
        if a.crop_min_scale >= 0:
            fields['crop_scale'] = (a.crop_min_scale, tuple(fields.get('crop_scale', (0.08, 1.0)))[1])
        try:
            view = augment.ViewConfig(**fields)
        except (ValueError, TypeError) as e:
            raise ConfigError(f'{key}: {e}') from None
        count = entry.get('count', 1)
        if not isinstance(count, int) or count < 0:
            raise ConfigError(f'config key "{key}.count" must be an integer >= 0, got {count!r}')
        mask = None
        ratio = float(entry.get('mask_ratio', 0.0))
        if not 0.0 <= ratio < 1.0:
            raise ConfigError(f'config key "{key}.mask_ratio" must be in [0, 1), got {ratio}')
        if ratio > 0:
            patch = int(entry.get('mask_patch_size', 0) or config.model.get('patch_size', 0))
            if patch <= 0 or view.size % patch:
                raise ConfigError(
                    f'config key "{key}.mask_patch_size": the view side {view.size} must be '
                    f'a multiple of a positive patch size, got {patch}'
                )
            n = (view.size // patch) ** 2
            mask = MaskSpec(n, int(round(ratio * n)), patch)
        views += [view] * count
        masks += [mask] * count
    if not views:
        raise ConfigError('config key "augment.views" gives no view (every count is 0)')
    return tuple(views), tuple(masks)


def make_views(images: jax.Array, key: jax.Array, views: tuple, masks: tuple) -> tuple[list, tuple]:
    """Inside the step: the augmented views and their masks (bool [B, patches], True = masked; None: no mask)."""
    aug_key, mask_key = jax.random.split(key)
    out = augment.augment_views(images, aug_key, views)
    drawn = tuple(
        None
        if m is None
        else augment.random_patch_masks(jax.random.fold_in(mask_key, i), images.shape[0], m.num_patches, m.num_masked)
        for i, m in enumerate(masks)
    )
    return out, drawn
