"""Validating a config against the registries, before any data is read or anything compiles.

One layer above the objectives, evaluators, data sources and models it checks: ``validate(config, num_devices)``
names the first bad key in one line (a ``ConfigError``, exit 2 at the command line) and calls the method's own
``Objective.check_config``; ``load_config_with_overrides`` loads a config file with command-line overrides (adding
the evaluators ``evals.NAME.type=TYPE`` names, sizing image folders from their images). The parsing itself
(files, overrides, ranges) is ``ssljax.config_lib``, a leaf.
"""

from __future__ import annotations

import math
import os
import re
from typing import Callable

import ml_collections

from ssljax import config_lib, evaluation, parallel
from ssljax.config_lib import ConfigError, load_config
from ssljax.data import samplers, sources
from ssljax.models import registry, resnet
from ssljax.objectives import OBJECTIVES


def add_evaluators(config: ml_collections.ConfigDict, overrides: list[str]) -> list[str]:
    """Adds ``evals.NAME`` (common and type defaults) for every override ``evals.NAME.type=TYPE`` whose NAME is not
    in ``config.evals`` -> the names added. An unknown TYPE is a ConfigError naming the key."""
    added = []
    for item in overrides:
        key, sep, kind = item.partition('=')
        parts = key.split('.')
        if not sep or len(parts) != 3 or parts[0] != 'evals' or parts[2] != 'type' or 'evals' not in config:
            continue
        name = parts[1]
        if name in config.evals:
            continue
        if kind not in evaluation.EVALUATORS:
            raise ConfigError(
                f'config key "{key}": unknown evaluator type {kind!r}; known: '
                f'{", ".join(sorted(evaluation.EVALUATORS))}'
            )
        settings = {**evaluation.COMMON_SETTINGS, **evaluation.EVALUATORS[kind].defaults, 'type': kind}
        with config.evals.unlocked():
            config.evals[name] = ml_collections.ConfigDict(settings)
        added.append(name)
    return added


NO_EVALS = ('none', '', '()', '{}')  # evals=none: no evaluator at all


def drop_evaluators(config: ml_collections.ConfigDict) -> None:
    """No evaluator and no random-init baseline (``--config.evals=none``): a smoke run that only trains."""
    with config.unlocked():
        config.evals = ml_collections.ConfigDict()
        if 'eval' in config:
            config.eval.random_init_baseline = False


def apply_overrides(config: ml_collections.ConfigDict, overrides: list[str]) -> ml_collections.ConfigDict:
    """``config_lib.apply_overrides`` after adding the evaluators that ``evals.NAME.type=TYPE`` overrides name.

    ``evals=none`` removes every evaluator defined so far and the random-init baseline (later ``evals.NAME.type=``
    overrides can add some back).
    """
    for item in overrides:  # in order, each one seeing the evaluators the earlier ones left
        key, sep, text = item.partition('=')
        if key == 'evals' and sep and text.strip().lower() in NO_EVALS and 'evals' in config:
            drop_evaluators(config)
            continue
        add_evaluators(config, [item])
        config_lib.apply_overrides(config, [item])
    return config


def load_config_with_overrides(
    spec: str, overrides: list[str], log: Callable[[str], None] | None = None
) -> ml_collections.ConfigDict:
    """``load_config(spec)`` with ``overrides`` applied, its shape keys following the dataset it ends up with.

    Image folders take their image size from the data: with ``dataset=image_folder`` and no ``image_size`` given
    (override or config argument), the size is the median shorter side of up to 256 of the training images
    (headers only), at most ``sources.FOLDER_MAX_SIDE``; the config is then rebuilt with the config argument
    ``image_size=S`` so that every size derived from it (views, multi-crop local views) follows, and the overrides
    applied again. A ``dataset`` override to a dataset of known shape rebuilds at that dataset's size the same way.
    When the dataset changes, ``num_classes`` (unless given) becomes the new dataset's (0 = from the data).
    ``log`` receives one line saying where a size came from. Config files without an ``image_size`` argument get
    ``image_size`` and ``augment.size`` set directly.
    """

    given = {item.partition('=')[0] for item in overrides}
    path, _, arg = spec.partition(':')
    arg_keys = {item.partition('=')[0] for item in filter(None, arg.split(','))}

    def build(config_arg: str) -> ml_collections.ConfigDict:
        config = load_config(f'{path}:{config_arg}' if config_arg else path)
        built_for = config.get('dataset')
        apply_overrides(config, overrides)
        dataset = config.get('dataset')
        if 'num_classes' not in given and dataset != built_for and dataset in sources.DATASET_SHAPES:
            with config.unlocked():
                config.num_classes = sources.DATASET_SHAPES[dataset]['num_classes']
        return config

    config = build(arg)
    dataset = config.get('dataset')
    if dataset not in sources.DATASET_SHAPES or 'image_size' in given or 'image_size' in arg_keys:
        return config  # validate() names an unknown dataset
    size, why = sources.DATASET_SHAPES[dataset]['image_size'], f'dataset {dataset}'
    if dataset == 'image_folder':
        if not config.get('data_dir') or not os.path.isdir(config.data_dir):
            return config  # validate() names the missing data_dir
        source = sources.FolderSource(config.data_dir, 'train', bad_images=config.get('bad_images', 'error'))
        side = source.typical_side()
        size = min(side, sources.FOLDER_MAX_SIDE)
        why = (
            f'the median shorter side of the images in {source.split_dir} ({side} px'
            f'{f", capped at {sources.FOLDER_MAX_SIDE}" if side > size else ""})'
        )
    if size == config.get('image_size') or size <= 0:
        return config
    try:
        config = build(','.join(filter(None, [arg, f'image_size={size}'])))
    except (ValueError, ConfigError):  # a config file without the image_size argument: set the two keys directly
        with config.unlocked():
            config.image_size = size
            if 'augment.size' not in given:
                config.augment.size = size
    if log is not None:
        log(f'image_size {size} from {why} (set --config.image_size to choose another)')
    return config


EMBEDDED = ('mnist', 'digits')


def validate(config: ml_collections.ConfigDict, num_devices: int, check_data: bool = True) -> None:
    """Checks that a config can run, naming the first offending key (``check_data``: also its data_dir)."""

    def need(ok: bool, message: str):
        if not ok:
            raise ConfigError(message)

    need(
        config.method in OBJECTIVES,
        f'unknown method {config.method!r} (config key "method"); known: {", ".join(sorted(OBJECTIVES))}',
    )
    need(
        config.model.backbone in registry.BACKBONES,
        f'unknown backbone {config.model.backbone!r} '
        f'(config key "model.backbone"); known: {", ".join(sorted(registry.BACKBONES))}',
    )
    registry.check_model_config(config)  # model.remat / remat_policy / scan / ViT shape keys vs the backbone
    need(
        config.dataset in sources.DATASETS,
        f'unknown dataset {config.dataset!r} (config key "dataset"); known: {", ".join(sorted(sources.DATASETS))}',
    )
    need(
        config.dtype in ('float32', 'bfloat16'), f'config key "dtype" must be float32 or bfloat16, got {config.dtype!r}'
    )
    need(config.batch_size > 0, f'config key "batch_size" must be positive, got {config.batch_size}')
    need(
        config.batch_size % num_devices == 0,
        f'batch_size {config.batch_size} is not divisible by the number of '
        f'devices ({num_devices}); use a multiple of {num_devices}',
    )
    check_scale(config, num_devices)
    need(config.total_steps > 0 or config.epochs > 0, 'set config key "total_steps" or "epochs" to a positive value')
    need(
        config.checkpoint_every >= 0 and config.eval_every >= 0 and config.log_every > 0,
        'checkpoint_every and eval_every must be >= 0 and log_every > 0',
    )
    if check_data and config.dataset not in EMBEDDED:
        need(
            bool(config.data_dir),
            f'dataset {config.dataset!r} needs config key "data_dir" (the tfds data_dir or the image-folder root)',
        )
        need(os.path.isdir(config.data_dir), f'data_dir {config.data_dir!r} does not exist (config key "data_dir")')
    if 'bad_images' in config:
        need(
            config.bad_images in ('error', 'skip'),
            f'config key "bad_images" must be error or skip, got {config.bad_images!r}',
        )
    if 'sampler' in config:
        need(
            config.sampler.name in samplers.SAMPLERS,
            f'unknown sampler {config.sampler.name!r} (config key '
            f'"sampler.name"); known: {", ".join(sorted(samplers.SAMPLERS))}',
        )
    if 'evals' in config:
        evaluation.validate_evals(config)  # the one check of config.evals in a run
    if config.dataset == 'image_folder':
        need(
            config.image_size > 0,
            'config key "image_size" is 0 (from the data), but the config was not loaded '
            'with configure.load_config_with_overrides, which looks at the images: set it to the stored side',
        )
    config_lib.check_ranges(config)
    OBJECTIVES[config.method].check_config(config, num_devices)  # the method's own keys, before any data is read


SHARDING_RULES = ('fsdp', 'replicate')
GRAD_ACCUM_MODES = ('exact', 'per_microbatch')


def check_scale(config: ml_collections.ConfigDict, num_devices: int) -> None:
    """``mesh``, ``mesh_dcn``, ``sharding_strategy``, ``grad_accum_*``: a ConfigError naming the first bad key."""
    setting = config_lib.scale_setting
    mesh, dcn = tuple(setting(config, 'mesh')), tuple(setting(config, 'mesh_dcn'))
    slices = 1
    if dcn:
        try:
            sizes = parallel.mesh_sizes(dcn, parallel.dcn_slices(dcn, num_devices), 'slices')
        except ValueError as e:
            raise ConfigError(f'config key "mesh_dcn" {e}, got {dcn!r}') from None
        slices = math.prod(sizes.values())
    try:
        parallel.mesh_sizes(mesh, num_devices // slices, 'slice' if dcn else 'run')
    except ValueError as e:
        raise ConfigError(f'config key "mesh" {e}, got {mesh!r}') from None
    for i, entry in enumerate(tuple(setting(config, 'sharding_strategy'))):
        if not isinstance(entry, (tuple, list)) or len(entry) != 2:
            raise ConfigError(f'config key "sharding_strategy" entry {i} must be a (regex, rule) pair, got {entry!r}')
        pattern, rule = entry
        try:
            re.compile(pattern)
        except (re.error, TypeError) as e:
            raise ConfigError(f'config key "sharding_strategy" entry {i}: bad regex {pattern!r} ({e})') from None
        if rule not in SHARDING_RULES:
            raise ConfigError(
                f'config key "sharding_strategy" entry {i}: unknown rule {rule!r}; known: {", ".join(SHARDING_RULES)}'
            )
    k = int(setting(config, 'grad_accum_steps'))
    if k < 1:
        raise ConfigError(f'config key "grad_accum_steps" must be >= 1, got {k}')
    mode = setting(config, 'grad_accum_mode')
    if mode not in GRAD_ACCUM_MODES:
        raise ConfigError(f'config key "grad_accum_mode" must be one of {", ".join(GRAD_ACCUM_MODES)}, got {mode!r}')
    if k > 1 and config.batch_size % (k * num_devices):
        raise ConfigError(
            f'config key "grad_accum_steps" ({k}) times the {num_devices} devices must divide batch_size '
            f'({config.batch_size}): every micro-batch splits evenly over the devices'
        )
    if k > 1 and mode == 'exact':
        cls = OBJECTIVES.get(config.method)
        if cls is not None and not cls.accumulation:
            raise ConfigError(
                f'config key "grad_accum_steps" ({k}): {config.method} has no exact gradient accumulation (its loss '
                'couples the batch and no split at the encoder output is written for it); set grad_accum_steps=1, '
                'or grad_accum_mode=per_microbatch, a change of method (docs/scaling-mesh.md)'
            )
        if encoder_has_batch_norm(config):
            raise ConfigError(
                f'config key "grad_accum_mode" (exact, with grad_accum_steps={k}) is impossible with BatchNorm in '
                f'the encoder (model.backbone={config.model.backbone}): each micro-batch would be normalised with '
                'its own statistics, so no split equals the one-batch step; use a BatchNorm-free encoder (a ViT), '
                'or grad_accum_mode=per_microbatch, an explicit change of method (docs/scaling-mesh.md)'
            )


def mesh_from_config(config, devices=None):
    """The run's mesh: ``config.mesh`` and ``config.mesh_dcn`` (their defaults: config_lib.SCALE_DEFAULTS)."""
    mesh, dcn = config_lib.scale_setting(config, 'mesh'), config_lib.scale_setting(config, 'mesh_dcn')
    return parallel.make_mesh(devices, tuple(mesh), tuple(dcn))


def encoder_has_batch_norm(config: ml_collections.ConfigDict) -> bool:
    """Whether ``config.model.backbone`` normalises with batch statistics (the ResNets) -- without building it."""
    ctor = registry.BACKBONES.get(config.model.backbone)
    cls = getattr(ctor, 'func', ctor)
    return isinstance(cls, type) and issubclass(cls, resnet.ResNet)
