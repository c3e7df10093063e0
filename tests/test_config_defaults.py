"""One source of truth for every objective default.

Each method's objective class carries the published default of every config key it reads (its dataclass fields);
a config file's objective block is exactly those keys, at those defaults, except where the file declares a recipe
override (``configs/common.py``: ``recipe(c, reason, KEY=VALUE)``). For every config file (with '' and
':dataset=cifar10', and the variants experiments/architecture/compare_runs.py records), a value that differs from
the default without a declaration fails, and so does a declaration whose value equals the default (a stale one).
"""
import importlib.util
import os

import pytest
from conftest import REPO

from configs import common
from ssljax import config_lib
from ssljax.objectives import OBJECTIVES


def _compare_runs_specs() -> tuple[str, ...]:
    path = os.path.join(REPO, 'experiments', 'architecture', 'compare_runs.py')
    spec = importlib.util.spec_from_file_location('ssljax_compare_runs', path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return tuple(module.SPECS)


METHOD_FILES = sorted(f[:-3] for f in os.listdir(os.path.join(REPO, 'configs'))
                      if f.endswith('.py') and f not in ('common.py', '__init__.py'))
SPECS = sorted({f'{name}{variant}' for name in METHOD_FILES for variant in ('', ':dataset=cifar10')}
               | {s for s in _compare_runs_specs() if ':' in s})


def _same(a, b) -> bool:
    """Equal as config values (a tuple and a list of the same numbers are; True and 1 are not)."""
    if isinstance(a, (tuple, list)) or isinstance(b, (tuple, list)):
        return isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)) and tuple(a) == tuple(b)
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    return a == b


@pytest.mark.parametrize('spec', SPECS)
def test_objective_values_are_defaults_or_declared_recipe_overrides(spec):
    name, _, arg = spec.partition(':')
    config = config_lib.load_config(os.path.join(REPO, 'configs', f'{name}.py') + (f':{arg}' if arg else ''))
    defaults = OBJECTIVES[config.method].config_defaults()
    declared = common.recipe_overrides(config)
    assert set(config.objective) == set(defaults), (
        f'{spec}: config.objective has {sorted(set(config.objective) - set(defaults))} that {config.method} does not '
        f'read and lacks {sorted(set(defaults) - set(config.objective))}')
    problems = []
    for key, default in defaults.items():
        value = config.objective[key]
        if key not in declared:
            if not _same(value, default):
                problems.append(f'objective.{key} = {value!r} differs from the default {default!r} without a recipe '
                                f'override')
            continue
        declared_value, reason = declared[key]
        assert reason.strip(), f'{spec}: objective.{key} is declared without naming its recipe'
        if _same(declared_value, default):
            problems.append(f'objective.{key} = {value!r} is declared a recipe override ({reason}) but equals the '
                            f'default: a stale declaration')
        elif not _same(value, declared_value):
            problems.append(f'objective.{key} = {value!r} was set after its declared override {declared_value!r} '
                            f'({reason})')
    assert not problems, f'{spec}:\n  ' + '\n  '.join(problems)


def test_a_declared_override_is_recorded_outside_the_config():
    """The record is bookkeeping next to the config, not in it: config.json gains no key."""
    config = config_lib.load_config(os.path.join(REPO, 'configs', 'simclr.py'))
    declared = common.recipe_overrides(config)
    assert declared['temperature'][0] == 0.2 and 'solo-learn' in declared['temperature'][1]
    assert OBJECTIVES['simclr'].config_defaults()['temperature'] == 0.1
    assert set(config.objective) == set(OBJECTIVES['simclr'].config_defaults())
    assert common.recipe_overrides(config_lib.load_config(os.path.join(REPO, 'configs', 'dclw.py'))) == {
        'projector_hidden': ((512,), 'the embedded MNIST budget: a 512-wide projector')}


def test_recipe_rejects_a_key_the_method_does_not_read():
    c = common.base_config('simclr')
    with pytest.raises(KeyError, match='objective.tau'):
        common.recipe(c, 'a typo', tau=0.5)


@pytest.mark.parametrize('method', sorted(m for m, cls in OBJECTIVES.items() if cls.__module__.startswith('ssljax.')))
def test_every_default_is_a_plain_config_value(method):
    """Defaults are what a ConfigDict holds and ``--config.objective.KEY=...`` parses: bool, int, float, str, tuple."""
    for key, value in OBJECTIVES[method].config_defaults().items():
        assert isinstance(value, (bool, int, float, str, tuple)), (method, key, value)


def test_parallel_default_mesh_is_the_config_default():
    """parallel imports nothing of ssljax, so it keeps its own copy of the default mesh; the two must agree."""
    from ssljax import config_lib, parallel

    assert tuple(parallel.DEFAULT_MESH) == tuple(tuple(a) for a in config_lib.SCALE_DEFAULTS['mesh'])
