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


def encoder_from_config(config) -> tuple[nn.Module, int]:
    """The backbone ``model.backbone`` built with every other key of ``config.model`` (mask token, drop-path, ...)."""
    dtype = jnp.bfloat16 if config.dtype == 'bfloat16' else jnp.float32
    settings = {k: v for k, v in config.model.items() if k != 'backbone'}
    return create_encoder(config.model.backbone, dtype=dtype, image_size=config.augment.size, **settings)
