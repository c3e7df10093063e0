"""Loading configs, applying ``--config.KEY=VALUE`` overrides, and validating before anything compiles.

Every error names the offending key (or file) in one line: an unknown key (with the closest known ones), a value
that does not parse as the key's type, an unknown method / backbone / dataset / dtype, a batch that does not split
over the devices.
"""
from __future__ import annotations

import ast
import difflib
import importlib.util
import os
import sys

import ml_collections


class ConfigError(ValueError):
    """A config that cannot run; the message names the key."""


def load_config(spec: str) -> ml_collections.ConfigDict:
    """'configs/simclr.py:dataset=cifar10' -> get_config('dataset=cifar10') of that file."""
    path, _, arg = spec.partition(':')
    if not os.path.isfile(path):
        raise ConfigError(f'config file {path!r} not found')
    repo_root = os.path.dirname(os.path.dirname(os.path.abspath(path)))
    if repo_root not in sys.path:  # method configs import configs.common
        sys.path.insert(0, repo_root)
    module_spec = importlib.util.spec_from_file_location(f'ssljax_config_{abs(hash(path))}', path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    if not hasattr(module, 'get_config'):
        raise ConfigError(f'config file {path!r} has no get_config(arg) function')
    return module.get_config(arg or None)


def _all_keys(config: ml_collections.ConfigDict, prefix: str = '') -> list[str]:
    keys = []
    for k, v in config.items():
        keys.append(prefix + k)
        if isinstance(v, ml_collections.ConfigDict):
            keys.extend(_all_keys(v, prefix + k + '.'))
    return keys


def parse_value(key: str, text: str, current):
    """Parses ``text`` as the type of the key's current value."""
    try:
        if isinstance(current, bool):
            if text.lower() not in ('true', 'false', '1', '0', 'yes', 'no'):
                raise ValueError
            return text.lower() in ('true', '1', 'yes')
        if isinstance(current, int):
            return int(text)
        if isinstance(current, float):
            return float(text)
        if isinstance(current, (tuple, list)):
            value = ast.literal_eval(text) if text.strip() else ()
            value = tuple(value) if isinstance(value, (tuple, list)) else (value,)
            if current and any(not isinstance(v, type(current[0])) for v in value):
                raise ValueError
            return value
        if isinstance(current, str):
            return text
    except (ValueError, SyntaxError):
        pass
    raise ConfigError(f'config key {key!r} expects a {type(current).__name__} '
                      f'(e.g. {current!r}), got {text!r}')


def apply_override(config: ml_collections.ConfigDict, key: str, text: str) -> None:
    """Sets ``config.<key>`` (dotted) from a command-line string, checking the key exists and the type fits."""
    parts = key.split('.')
    node = config
    for i, part in enumerate(parts):
        if not isinstance(node, ml_collections.ConfigDict) or part not in node:
            known = _all_keys(config)
            close = difflib.get_close_matches(key, known, n=3)
            hint = f'; did you mean {", ".join(close)}?' if close else ''
            raise ConfigError(f'unknown config key {key!r}{hint}')
        if i < len(parts) - 1:
            node = node[part]
    current = node[parts[-1]]
    if isinstance(current, ml_collections.ConfigDict):
        raise ConfigError(f'config key {key!r} is a group; set one of its keys, e.g. {key}.{next(iter(current))}')
    with node.unlocked():
        node[parts[-1]] = parse_value(key, text, current)


def apply_overrides(config: ml_collections.ConfigDict, overrides: list[str]) -> ml_collections.ConfigDict:
    for item in overrides:
        key, sep, text = item.partition('=')
        if not sep:
            raise ConfigError(f'override {item!r} is not of the form --config.KEY=VALUE')
        apply_override(config, key, text)
    return config


EMBEDDED = ('mnist', 'digits')


def validate(config: ml_collections.ConfigDict, num_devices: int, check_data: bool = True) -> None:
    """Checks that a config can run, naming the first offending key (``check_data``: also its data_dir)."""
    from ssljax.data import sources
    from ssljax.models import registry
    from ssljax.objectives import OBJECTIVES

    def need(ok: bool, message: str):
        if not ok:
            raise ConfigError(message)

    need(config.method in OBJECTIVES, f'unknown method {config.method!r} (config key "method"); '
         f'known: {", ".join(sorted(OBJECTIVES))}')
    need(config.model.backbone in registry.BACKBONES, f'unknown backbone {config.model.backbone!r} '
         f'(config key "model.backbone"); known: {", ".join(sorted(registry.BACKBONES))}')
    need(config.dataset in sources.DATASETS, f'unknown dataset {config.dataset!r} (config key "dataset"); '
         f'known: {", ".join(sorted(sources.DATASETS))}')
    need(config.dtype in ('float32', 'bfloat16'), f'config key "dtype" must be float32 or bfloat16, got {config.dtype!r}')
    need(config.batch_size > 0, f'config key "batch_size" must be positive, got {config.batch_size}')
    need(config.batch_size % num_devices == 0, f'batch_size {config.batch_size} is not divisible by the number of '
         f'devices ({num_devices}); use a multiple of {num_devices}')
    need(config.total_steps > 0 or config.epochs > 0, 'set config key "total_steps" or "epochs" to a positive value')
    need(config.checkpoint_every >= 0 and config.eval_every >= 0 and config.log_every > 0,
         'checkpoint_every and eval_every must be >= 0 and log_every > 0')
    if check_data and config.dataset not in EMBEDDED:
        need(bool(config.data_dir), f'dataset {config.dataset!r} needs config key "data_dir" (the tfds data_dir or '
             f'the image-folder root)')
        need(os.path.isdir(config.data_dir), f'data_dir {config.data_dir!r} does not exist (config key "data_dir")')


def total_steps(config, num_examples: int) -> tuple[int, int]:
    """-> (total optimizer steps, steps per epoch); ``total_steps`` > 0 wins over ``epochs``."""
    steps_per_epoch = num_examples // config.batch_size
    if steps_per_epoch == 0:
        raise ConfigError(f'batch_size {config.batch_size} is larger than the training set ({num_examples} images)')
    if config.total_steps > 0:
        return config.total_steps, steps_per_epoch
    return max(1, int(round(config.epochs * steps_per_epoch))), steps_per_epoch
