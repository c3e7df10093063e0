"""``Objective.check_config(config, num_devices)``: every method validates its own config keys from the config alone
(no data, no model, nothing built), and each bad setting is one ConfigError line naming the key."""
import os

import pytest
from conftest import REPO

from ssljax import config_lib
from ssljax.config_lib import ConfigError
from ssljax.objectives import OBJECTIVES

# method -> (key, bad value, what the message names); one bad setting per method, reachable by check_config alone.
BAD = {
    'simclr': ('objective.temperature', 0.0, 'objective.temperature'),
    'gsimclr': ('objective.temperature', -1.0, 'objective.temperature'),
    'dcl': ('objective.temperature', 0.0, 'objective.temperature'),
    'dclw': ('objective.weight_norm', 'max', 'objective.weight_norm'),
    'mocov2': ('objective.queue_size', 1000, 'objective.queue_size'),
    'mochi': ('objective.n_hard', 4096, 'objective.n_hard'),
    'mocov3': ('objective.freeze_patch_embed', True, 'objective.freeze_patch_embed'),
    'triplet': ('objective.negative', 'mean', 'objective.negative'),
    'isogclr': ('objective.gamma', 0.0, 'objective.gamma'),
    'contrastive_clustering': ('objective.num_clusters', 1, 'objective.num_clusters'),
    'densecl': ('objective.loss_lambda', 1.5, 'objective.loss_lambda'),
    'byol': ('objective.predictor_dim', 64, 'objective.predictor_dim'),
    'simsiam': ('objective.predictor_dim', 4, 'objective.predictor_dim'),
    'directpred': ('objective.predictor', 'deep', 'objective.predictor'),
    'barlow_twins': ('objective.scale_loss', 0.0, 'objective.scale_loss'),
    'vicreg': ('objective.sim_coeff', -1.0, 'objective.sim_coeff'),
    'dino': ('objective.warmup_teacher_temp_epochs', -1, 'objective.warmup_teacher_temp_epochs'),
    'mae': ('objective.decoder_depth', 0, 'objective.decoder_depth'),
    'simmim': ('augment.views.view.mask_ratio', 0.0, 'augment.views.view.mask_ratio'),
    'masked_contrastive': ('objective.term', 'dino', 'objective.term'),
}

# More bad settings, each a check that lived in from_config (or was missing) before check_config.
MORE = [
    ('mocov2', 'objective.bn_groups', 3, 2, 'objective.bn_groups'),   # not a multiple of the 2 devices
    ('mocov2', 'objective.bn_groups', 48, 1, 'objective.bn_groups'),  # does not split the batch of 256
    ('mocov2', 'grad_accum_steps', 2, 1, 'objective.projector_last_bn'),  # centred head per group + exact accum
    ('mochi', 'objective.mix_start_epochs', -1.0, 1, 'objective.mix_start_epochs'),
    ('triplet', 'objective.neg_group', 3, 1, 'objective.neg_group'),
    ('mocov3', 'objective.predictor_dim', 64, 1, 'objective.predictor_dim'),
    ('directpred', 'objective.rho', 1.0, 1, 'objective.rho'),
    ('directpred', 'objective.freq', 0, 1, 'objective.freq'),
    ('directpred', 'objective.predictor_write', 'sometimes', 1, 'objective.predictor_write'),
    ('directpred', 'objective.solver', 'svd', 1, 'objective.solver'),
    ('dclw', 'objective.sigma', 0.0, 1, 'objective.sigma'),
    ('isogclr', 'objective.variant', 'libauc', 1, 'objective.variant'),
    ('densecl', 'model.backbone', 'vit_tiny', 1, 'model.backbone'),
    ('dino', 'objective.student_temp', 0.0, 1, 'objective.student_temp'),
    ('barlow_twins', 'objective.lambd', -0.1, 1, 'objective.lambd'),
    ('masked_contrastive', 'objective.weight', -1.0, 1, 'objective.weight'),
    ('mae', 'model.mask_mode', 'token', 1, 'model.mask_mode'),
]


def load(method: str, **changes):
    config = config_lib.load_config(os.path.join(REPO, 'configs', f'{method}.py'))
    for key, value in changes.items():
        node, parts = config, key.split('.')
        for part in parts[:-1]:
            node = node[part]
        node[parts[-1]] = value
    return config


def test_every_method_has_a_bad_setting_here():
    assert set(BAD) == {m for m, cls in OBJECTIVES.items() if cls.__module__.startswith('ssljax.')}


def _no_building(monkeypatch, cls):
    """check_config must not build the objective (nor, through it, any module)."""
    def refuse(*args, **kwargs):
        raise AssertionError('check_config built the objective')
    monkeypatch.setattr(cls, 'from_config', classmethod(refuse))
    monkeypatch.setattr(cls, 'build', classmethod(refuse))


@pytest.mark.parametrize('method', sorted(BAD))
def test_check_config_alone_names_the_bad_key(method, monkeypatch):
    cls = OBJECTIVES[method]
    _no_building(monkeypatch, cls)
    cls.check_config(load(method), 1)  # the method's own config passes
    key, value, named = BAD[method]
    with pytest.raises(ConfigError, match=f'config key "{named}"'.replace('.', r'\.')) as info:
        cls.check_config(load(method, **{key: value}), 1)
    assert '\n' not in str(info.value)


@pytest.mark.parametrize('method,key,value,devices,named', MORE)
def test_more_bad_settings(method, key, value, devices, named):
    with pytest.raises(ConfigError, match=f'config key "{named}"'.replace('.', r'\.')) as info:
        OBJECTIVES[method].check_config(load(method, **{key: value}), devices)
    assert '\n' not in str(info.value)


def test_a_missing_key_is_a_config_error_naming_it():
    config = load('simclr')
    with config.objective.unlocked():
        del config.objective['temperature']
    with pytest.raises(ConfigError, match=r'config key "objective\.temperature" is missing'):
        OBJECTIVES['simclr'].check_config(config, 1)


@pytest.mark.parametrize('name', sorted(f[:-3] for f in os.listdir(os.path.join(REPO, 'configs'))
                                        if f.endswith('.py') and f not in ('common.py', '__init__.py')))
@pytest.mark.parametrize('variant', ['', ':dataset=cifar10'])
def test_every_config_passes_its_check_on_one_and_eight_devices(name, variant):
    config = config_lib.load_config(os.path.join(REPO, 'configs', f'{name}.py{variant}'))
    for devices in (1, 8):
        OBJECTIVES[config.method].check_config(config, devices)
