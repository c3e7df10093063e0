"""Configs as data: loading a config file, ``--config.KEY=VALUE`` overrides, numeric ranges, ``ConfigError``.

A leaf of the package: it imports nothing from ssljax, so every layer can raise :class:`ConfigError`. Validation
against the registries (methods, backbones, datasets, samplers, evaluators) lives one layer up, in
``ssljax.configure``. Every error names the offending key (or file) in one line: an unknown key (with the closest
known ones), a value that does not parse as the key's type, a number outside its range (``RANGES``).
"""

from __future__ import annotations

import ast
import difflib
import fnmatch
import importlib.util
import os
import sys

import ml_collections


class ConfigError(ValueError):
    """A config that cannot run; the message names the key."""


# The method configs shipped with the package: configs/ beside ssljax/ (a clone, an editable or a regular install).
CONFIG_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'configs')


def config_names(directory: str = CONFIG_DIR) -> list[str]:
    """The method config names under ``directory`` (``simclr`` for configs/simclr.py), sorted."""
    if not os.path.isdir(directory):
        return []
    return sorted(
        f[:-3] for f in os.listdir(directory) if f.endswith('.py') and not f.startswith('_') and f != 'common.py'
    )


def resolve_config_path(path: str) -> str:
    """A config file path, or a config name: ``simclr`` (or ``simclr.py``) -> ``configs/simclr.py``.

    An existing file wins; a bare name is looked up in ``./configs`` and then in the package's own configs/
    (:data:`CONFIG_DIR`). Neither: a ConfigError that suggests the closest names.
    """
    if os.path.isfile(path):
        return path
    name = path[:-3] if path.endswith('.py') else path
    if name and os.sep not in name and '/' not in name:
        for directory in ('configs', CONFIG_DIR):
            candidate = os.path.join(directory, f'{name}.py')
            if name != 'common' and os.path.isfile(candidate):
                return candidate
    close = difflib.get_close_matches(os.path.basename(name), config_names(), n=3, cutoff=0.6)
    hint = f'; did you mean {", ".join(close)}?' if close else ''
    if not hint and '/' not in path and os.sep not in path:
        hint = ' (neither a file nor a config name; `ssljax configs` lists the names)'
    raise ConfigError(f'config file {path!r} not found{hint}')


def load_config(spec: str) -> ml_collections.ConfigDict:
    """'configs/simclr.py:dataset=cifar10' (or 'simclr:dataset=cifar10') -> get_config('dataset=cifar10') of that
    file; a name resolves as :func:`resolve_config_path` says."""
    path, _, arg = spec.partition(':')
    path = resolve_config_path(path)
    repo_root = os.path.dirname(os.path.dirname(os.path.abspath(path)))
    if repo_root not in sys.path:  # method configs import configs.common
        sys.path.insert(0, repo_root)
    module_spec = importlib.util.spec_from_file_location(f'ssljax_config_{abs(hash(path))}', path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    if not hasattr(module, 'get_config'):
        raise ConfigError(f'config file {path!r} has no get_config(arg) function')
    try:
        return module.get_config(arg or None)
    except ConfigError:
        raise
    except ValueError as e:  # a bad variant argument (unknown key or value): a config problem, exit 2
        raise ConfigError(f'{spec}: {e}') from e


# ----- the scale keys' defaults: the one place they are written (configs/common.py sets them from here; code that
# reads a config without them, e.g. a workdir's saved config from before they existed, falls back to these) -------
SCALE_DEFAULTS = {
    # (axis, size) pairs over 'data' and 'fsdp', -1 = the devices left over: plain data parallelism
    'mesh': (('data', -1), ('fsdp', 1)),
    # multi-slice: sizes across slices, e.g. (('data', 4),); mesh then gives the sizes within one slice
    'mesh_dcn': (),
    # ordered (regex over the '/'-joined TrainState path, rule) pairs, first match wins; rules: fsdp | replicate.
    # Optimizer moments and EMA copies of a parameter always follow that parameter.
    'sharding_strategy': (('params/.*', 'fsdp'), ('.*', 'replicate')),
    # leaves smaller than this (MiB) stay replicated under the fsdp rule: biases, norms, tokens, matrices under
    # 512 x 512 float32. 1, not big_vision's 4: at 4 a ViT-B's 768 x 768 attention projections (2.25 MiB) and every
    # MAE-decoder matrix but the MLP's stay whole on every device (BENCHMARKS.md "Memory at scale")
    'sharding_min_size_mb': 1.0,
    # the global batch in this many micro-batches per optimizer step
    'grad_accum_steps': 1,
    # exact (equal to the one-batch step, or a ConfigError) | per_microbatch (a documented change of method)
    'grad_accum_mode': 'exact',
}


def scale_setting(config, key: str):
    """``config[key]`` for a key of :data:`SCALE_DEFAULTS`, its default when the config does not have it."""
    return config.get(key, SCALE_DEFAULTS[key])


def all_keys(config: ml_collections.ConfigDict, prefix: str = '') -> list[str]:
    keys = []
    for k, v in config.items():
        keys.append(prefix + k)
        if isinstance(v, ml_collections.ConfigDict):
            keys.extend(all_keys(v, prefix + k + '.'))
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
            try:
                value = ast.literal_eval(text) if text.strip() else ()
            except (ValueError, SyntaxError):
                if not (current and isinstance(current[0], str)):
                    raise
                value = tuple(part.strip() for part in text.split(',') if part.strip())  # knn,linear,part
            value = tuple(value) if isinstance(value, (tuple, list)) else (value,)
            if current and any(not isinstance(v, type(current[0])) for v in value):
                raise ValueError
            return value
        if isinstance(current, str):
            return text
    except (ValueError, SyntaxError):
        pass
    raise ConfigError(f'config key {key!r} expects {type_words(current)} (e.g. {current!r}), got {text!r}')


TYPE_WORDS = {bool: 'a bool', int: 'an int', float: 'a float', str: 'a string', tuple: 'a tuple', list: 'a list'}


def type_words(value) -> str:
    """'an int', 'a float', 'a tuple', ...: the type of ``value`` with its article."""
    name = type(value).__name__
    return TYPE_WORDS.get(type(value), f'{"an" if name[:1] in "aeiou" else "a"} {name}')


def _initials(name: str) -> str:
    words = [w for w in name.split('_') if w]
    return ''.join(w[0] for w in words) if len(words) > 1 else ''


def suggest_keys(key: str, known: list[str], n: int = 3) -> list[str]:
    """Known keys close to an unknown ``key``: by the whole dotted key (difflib) and by its last part.

    The last part matches a known key's last part when it is equal (a key in another group), when one is the
    other's initials (``learning_rate`` -> ``lr``, ``wd`` -> ``weight_decay``), when one starts the other (``temp``
    -> ``temperature``) or when difflib finds them close. Keys of the same group as a dotted ``key`` rank first among
    equals.
    """
    parent, _, last = key.lower().rpartition('.')
    scores = {}
    for k in difflib.get_close_matches(key, known, n=n, cutoff=0.6):
        scores[k] = 2 + difflib.SequenceMatcher(None, key, k).ratio()
    for k in known:
        k_last = k.lower().rpartition('.')[2]
        if k_last == last:
            score = 3.5
        elif last and (_initials(last) == k_last or _initials(k_last) == last):
            score = 3.0
        elif min(len(last), len(k_last)) >= 3 and (k_last.startswith(last) or last.startswith(k_last)):
            score = 2.5
        else:
            ratio = difflib.SequenceMatcher(None, last, k_last).ratio()
            score = 1 + ratio if ratio >= 0.75 else 0
        if score:
            scores[k] = max(scores.get(k, 0), score)
    same_group = {k: bool(parent) and k.rpartition('.')[0] == parent for k in scores}
    ranked = sorted(scores, key=lambda k: (-(scores[k] + 0.5 * same_group[k]), k.count('.'), k))
    return ranked[:n]


def apply_override(config: ml_collections.ConfigDict, key: str, text: str) -> None:
    """Sets ``config.<key>`` (dotted) from a command-line string, checking the key exists and the type fits."""
    parts = key.split('.')
    node = config
    for i, part in enumerate(parts):
        if not isinstance(node, ml_collections.ConfigDict) or part not in node:
            close = suggest_keys(key, all_keys(config))
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
    """Applies ``KEY=VALUE`` overrides in order, each to a key the config already has (``apply_override``).

    ``ssljax.configure.apply_overrides`` first adds the evaluators that ``evals.NAME.type=TYPE`` overrides name.
    """
    for item in overrides:
        key, sep, text = item.partition('=')
        if not sep:
            raise ConfigError(f'override {item!r} is not of the form --config.KEY=VALUE')
        apply_override(config, key, text)
    return config


# Valid ranges of numeric config keys: (pattern over the dotted key, range, negative = "unset"). The first pattern
# that matches a key decides (so specific keys come before the patterns that would also match them); range None
# means the key is not checked. Tuples of numbers are checked element by element; bools and strings never.
RANGES = (
    ('keep_checkpoints', '[1, inf)', False),
    ('log_every', '[1, inf)', False),
    ('checkpoint_every', '[0, inf)', False),
    ('eval_every', '[0, inf)', False),
    ('*batch_size', '[1, inf)', False),
    ('total_steps', '[0, inf)', False),  # 0: from epochs
    ('epochs', '[0, inf)', False),
    ('*_epochs', '[0, inf)', False),  # warm-up epochs, warmup_teacher_temp_epochs, linear_epochs
    ('*.epochs', '[1, inf)', False),
    ('seed', '[0, inf)', False),
    ('image_size', '[1, inf)', False),
    ('num_classes', '[0, inf)', False),  # 0: from the dataset
    ('device_data_max_mb', '[0, inf)', False),
    ('augment.size', '[1, inf)', False),
    ('augment.blur_prob', '[0, 1]', True),  # negative: each view's own value
    ('augment.crop_min_scale', '(0, 1]', True),
    ('augment.*crop_scale', '(0, 1]', False),
    ('augment.*crop_ratio', '(0, inf)', False),
    ('augment.*blur_sigma', '(0, inf)', False),
    ('augment.*.std', '(0, inf)', False),
    ('augment.*.mean', '[0, 1]', False),
    ('augment.*prob', '[0, 1]', False),
    ('augment.*threshold', '[0, 1]', False),
    ('augment.*mask_ratio', '[0, 1)', False),
    ('augment.*size', '[0, inf)', False),  # per-view size, local_size: 0 = the default
    ('augment.*count', '[0, inf)', False),
    ('augment.n_local', '[0, inf)', False),
    ('augment.*kernel', '[0, inf)', False),
    ('augment.*', '[0, inf)', False),  # colour-jitter strengths, hue
    ('optimizer.warmup_steps', None, False),  # negative: from warmup_epochs
    ('optimizer.weight_decay_end', None, False),  # negative: constant weight decay
    ('optimizer.warmup_init_lr', '[0, inf)', False),
    ('optimizer.final_lr', '[0, inf)', False),
    ('*lr', '(0, inf)', False),  # optimizer.lr, probe and linear-eval learning rates
    ('*weight_decay', '[0, inf)', False),
    ('objective.ema_*', '[0, 1]', False),  # EMA schedule ends (BYOL's target reaches 1)
    ('*momentum*', '[0, 1)', False),
    ('optimizer.b1', '[0, 1)', False),
    ('optimizer.b2', '[0, 1)', False),
    ('optimizer.eps', '[0, inf)', False),
    ('optimizer.lars_eta', '(0, inf)', False),
    ('optimizer.clip_grad', '[0, inf)', False),  # 0: off
    ('*temp*', '(0, inf)', False),  # softmax temperatures
    ('evals.*.every', '[-1, inf)', False),  # -1: eval_every
    ('*knn_k', '[1, inf)', False),
    ('evals.*.k', '[1, inf)', False),
    ('*max_examples', '[0, inf)', False),
    ('*max_train_examples', '[0, inf)', False),
    ('*num_clusters', '[0, inf)', False),
    ('model.patch_size', '[1, inf)', False),
    ('model.cifar_stem_padding', '[0, inf)', False),
    ('model.dim', '[0, inf)', False),  # 0: the backbone preset's (dim, depth, num_heads, mlp_ratio, mlp_dim)
    ('model.depth', '[0, inf)', False),
    ('model.num_heads', '[0, inf)', False),
    ('model.mlp_ratio', '[0, inf)', False),
    ('model.mlp_dim', '[0, inf)', False),
    ('objective.*_dim', '[1, inf)', False),
    ('objective.*_hidden', '[1, inf)', False),
    ('objective.head_*', '[1, inf)', False),
    ('objective.*coeff', '[0, inf)', False),
    ('objective.lambd', '[0, inf)', False),
    ('objective.scale_loss', '(0, inf)', False),
    ('objective.eps', '[0, inf)', False),
    ('objective.rho', '[0, 1]', False),
    ('objective.freq', '[1, inf)', False),
    ('sharding_min_size_mb', '[0, inf)', False),
    ('grad_accum_steps', '[1, inf)', False),
    ('mesh', None, False),  # (axis, size) pairs: checked by configure.validate
    ('mesh_dcn', None, False),
    ('distributed.num_processes', '[0, inf)', False),
    ('distributed.process_id', '[-1, inf)', False),
)


def _parse_range(text: str):
    lo_text, hi_text = text[1:-1].split(',')
    return float(lo_text), text[0] == '[', float(hi_text), text[-1] == ']'


def _range_words(text: str) -> str:
    lo, lo_closed, hi, hi_closed = _parse_range(text)
    if hi == float('inf'):
        return f'{">=" if lo_closed else ">"} {lo:g}'
    return f'in {text}'


def _numbers(value) -> list | None:
    """The numbers a value holds (itself, or a tuple's elements), None when it is not numeric."""
    values = list(value) if isinstance(value, (tuple, list)) else [value]
    if not values or any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in values):
        return None
    return values


def range_of(key: str) -> str | None:
    """The valid range of a numeric key as ``check_ranges`` applies it ('(0, inf)', '[0, 1] or negative: unset'),
    None when no rule of ``RANGES`` checks it."""
    rule = next((r for r in RANGES if fnmatch.fnmatchcase(key, r[0])), None)
    if rule is None or rule[1] is None:
        return None
    return rule[1] + (' or negative: unset' if rule[2] else '')


def check_ranges(config: ml_collections.ConfigDict) -> None:
    """Checks every numeric key of ``config`` that has a rule in ``RANGES``; one line naming each bad key."""
    problems = []
    for key in all_keys(config):
        rule = next((r for r in RANGES if fnmatch.fnmatchcase(key, r[0])), None)
        if rule is None or rule[1] is None:
            continue
        node = config
        for part in key.split('.'):
            node = node[part]
        numbers = _numbers(node)
        if numbers is None:
            continue
        lo, lo_closed, hi, hi_closed = _parse_range(rule[1])
        for v in numbers:
            if rule[2] and v < 0:
                continue
            above = v >= lo if lo_closed else v > lo
            below = v <= hi if hi_closed else v < hi
            if not (above and below):
                unset = ' (or negative: unset)' if rule[2] else ''
                problems.append(f'config key "{key}" must be {_range_words(rule[1])}{unset}, got {node!r}')
                break
    if problems:
        raise ConfigError('; '.join(problems))


def total_steps(config, num_examples: int) -> tuple[int, int]:
    """-> (total optimizer steps, steps per epoch); ``total_steps`` > 0 wins over ``epochs``."""
    steps_per_epoch = num_examples // config.batch_size
    if steps_per_epoch == 0:
        raise ConfigError(f'batch_size {config.batch_size} is larger than the training set ({num_examples} images)')
    if config.total_steps > 0:
        return config.total_steps, steps_per_epoch
    return max(1, int(round(config.epochs * steps_per_epoch))), steps_per_epoch
