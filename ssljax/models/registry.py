"""Encoders by name: ``create_encoder('resnet18', dtype=jnp.bfloat16, cifar_stem=True) -> (module, feature_dim)``."""

from __future__ import annotations

import dataclasses
from typing import Callable

import flax.linen as nn
import jax.numpy as jnp

from ssljax.models import resnet, vit

# name -> constructor of the architecture; create_encoder adds dtype and the stem / patch / image options.
BACKBONES: dict[str, Callable[..., nn.Module]] = {
    "resnet18": resnet.ResNet18,
    "resnet34": resnet.ResNet34,
    "resnet50": resnet.ResNet50,
    "resnet_tiny": resnet.ResNetTiny,
    "resnet_mini": resnet.ResNetMini,
    "vit_tiny": vit.ViTTiny,
    "vit_small": vit.ViTSmall,
    "vit_base": vit.ViTBase,
    "vit_large": vit.ViTLarge,
    "vit_huge": vit.ViTHuge,
    "vit_giant": vit.ViTGiant,
    "vit_test": vit.ViTTest,
}


def _settings(ctor) -> set[str]:
    """Field names of the module a constructor (a class or a functools.partial of one) builds."""
    cls = ctor.func if hasattr(ctor, "func") else ctor
    return {f.name for f in dataclasses.fields(cls)}


def create_encoder(
    name: str,
    *,
    dtype=jnp.float32,
    cifar_stem: bool = False,
    cifar_stem_padding: int = 1,
    patch_size: int | None = None,
    image_size: int | None = None,
    **overrides,
) -> tuple[nn.Module, int]:
    """Builds the encoder ``name`` and returns ``(module, feature_dim)``; feature_dim is the width of 'pooled'.

    ResNets: ``cifar_stem`` picks the 3x3/1 stem without max-pool, padded by ``cifar_stem_padding`` (1, or solo-learn's
    2); ``patch_size`` and ``image_size`` are ignored.
    ViTs: ``image_size`` is required (it sizes the positional table and is checked against ``patch_size``);
    ``patch_size`` defaults to 16 (4 for vit_test); ``cifar_stem`` and ``cifar_stem_padding`` are ignored.
    ``overrides`` go to the module unchanged (e.g. ``pool='mean'``, ``mask_mode='token'``, ``pos_embed='learned'``).
    Unknown names raise ValueError listing the valid ones.
    """
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; valid names: {', '.join(sorted(BACKBONES))}")
    ctor = BACKBONES[name]
    settings = _settings(ctor)
    unknown = sorted(set(overrides) - settings)
    if unknown:
        raise ValueError(
            f"config key \"model.{unknown[0]}\" is not a setting of backbone {name!r}; its settings: "
            f"{', '.join(sorted(settings - {'parent', 'name'}))}"
        )
    if name.startswith("resnet"):
        module = ctor(dtype=dtype, cifar_stem=cifar_stem, cifar_stem_padding=cifar_stem_padding, **overrides)
    else:
        if image_size is None:
            raise ValueError(f"image_size is required for ViT backbone {name!r}")
        kwargs = dict(overrides)
        if patch_size is not None:
            kwargs["patch_size"] = patch_size
        module = ctor(dtype=dtype, image_size=image_size, **kwargs)
        if module.image_size % module.patch_size:
            raise ValueError(f"image_size {module.image_size} is not divisible by patch_size {module.patch_size}")
    return module, module.feature_dim


# config.model keys whose value here means "the backbone's own setting": not passed to the module, so a ResNet config
# carries them without error and a ViT keeps its preset's shape. Any other value is passed (and must be a setting
# of the backbone: --config.model.scan=true on a ResNet is an error naming the key).
UNSET = {'dim': 0, 'depth': 0, 'num_heads': 0, 'mlp_ratio': 0.0, 'mlp_dim': 0, 'scan': False}


def model_settings(model) -> dict:
    """The ``config.model`` keys (a ConfigDict or an exported description's dict) that go to the module: every key
    but ``backbone``, less the unset ones."""
    settings = {k: v for k, v in model.items() if k != 'backbone' and not (k in UNSET and v == UNSET[k])}
    backbone = BACKBONES.get(model['backbone'])
    if 'mlp_ratio' in settings and 'mlp_dim' not in settings and backbone and 'mlp_dim' in _settings(backbone):
        settings['mlp_dim'] = 0  # an explicit ratio wins over a preset's MLP width (vit_giant's 6144)
    return settings


def check_model_config(config) -> None:
    """ConfigError naming the ``config.model`` key that cannot build the backbone (before anything is created)."""
    from ssljax.config_lib import ConfigError  # pylint: disable=import-outside-toplevel

    model = config.model
    if 'remat' in model and model.remat not in vit.REMAT_MODES:
        raise ConfigError(f'config key "model.remat" must be one of {", ".join(vit.REMAT_MODES)}, got {model.remat!r}')
    if 'remat_policy' in model and model.remat_policy not in vit.REMAT_POLICIES:
        raise ConfigError(
            f'config key "model.remat_policy" must be a jax.checkpoint_policies name that takes no argument '
            f'({", ".join(vit.REMAT_POLICIES)}), got {model.remat_policy!r}'
        )
    settings = _settings(BACKBONES[model.backbone]) if model.backbone in BACKBONES else set()
    for key in model_settings(model):
        if settings and key not in settings and key not in ('cifar_stem', 'cifar_stem_padding', 'patch_size'):
            raise ConfigError(
                f'config key "model.{key}" is not a setting of backbone {model.backbone!r} '
                f'(leave it at {UNSET[key]!r} for this backbone)'
                if key in UNSET
                else f'config key "model.{key}" is not a setting of backbone {model.backbone!r}'
            )


def encoder_from_config(config) -> tuple[nn.Module, int]:
    """The backbone ``model.backbone`` built with every other key of ``config.model`` (mask token, drop-path, ...).

    ``dim``, ``depth``, ``num_heads``, ``mlp_ratio``, ``mlp_dim`` at 0 and ``scan`` False keep the preset's own.
    """
    dtype = jnp.bfloat16 if config.dtype == 'bfloat16' else jnp.float32
    settings = model_settings(config.model)
    return create_encoder(config.model.backbone, dtype=dtype, image_size=config.augment.size, **settings)
