"""Config loading, overrides and validation: each mistake is one clear error naming the key."""
import os

import pytest
from conftest import REPO

from configs import common
from ssljax import config_lib, configure
from ssljax.models import registry

REQUIRED_KEYS = ('method', 'dataset', 'data_dir', 'model.backbone', 'batch_size', 'total_steps', 'epochs', 'dtype',
                 'seed', 'eval_every', 'checkpoint_every')


@pytest.mark.parametrize('spec', ['configs/simclr.py', 'configs/byol.py', 'configs/simclr.py:dataset=cifar10',
                                  'configs/byol.py:dataset=cifar10'])
def test_every_config_has_the_interface_keys(spec):
    config = config_lib.load_config(spec)
    for key in REQUIRED_KEYS:
        node = config
        for part in key.split('.'):
            assert part in node, f'{spec} lacks {key}'
            node = node[part]


def test_cifar_variant_is_solo_learn_recipe():
    c = config_lib.load_config('configs/simclr.py:dataset=cifar10')
    assert (c.model.backbone, c.batch_size, c.optimizer.name, c.optimizer.lr, c.objective.temperature) == \
        ('resnet18', 256, 'lars', 0.4, 0.2)
    assert tuple(c.objective.projector_hidden) == (2048,) and c.objective.projector_dim == 256
    assert c.model.cifar_stem and c.epochs == 40
    b = config_lib.load_config('configs/byol.py:dataset=cifar10')
    assert (b.optimizer.lr, b.optimizer.weight_decay, b.objective.ema_base) == (1.0, 1e-5, 0.99)


def test_overrides_parse_types():
    c = config_lib.load_config('configs/simclr.py')
    configure.apply_overrides(c, ['batch_size=32', 'optimizer.lr=0.5', 'model.cifar_stem=false',
                                   'objective.projector_hidden=(64, 64)', 'dataset=digits'])
    assert c.batch_size == 32 and c.optimizer.lr == 0.5 and c.model.cifar_stem is False
    assert tuple(c.objective.projector_hidden) == (64, 64) and c.dataset == 'digits'
    # a tuple of names also reads as plain comma-separated words (no quotes to escape in a shell)
    configure.apply_overrides(c, ['eval.baseline_evals=knn, linear,part'])
    assert c.eval.baseline_evals == ('knn', 'linear', 'part')
    configure.apply_overrides(c, ["eval.baseline_evals=('knn',)"])
    assert c.eval.baseline_evals == ('knn',)


@pytest.mark.parametrize('override, message', [
    ('optimizer.lrr=0.1', "unknown config key 'optimizer.lrr'; did you mean optimizer.lr"),
    ('batch_size=abc', "config key 'batch_size' expects an int"),
    ('model.cifar_stem=maybe', "config key 'model.cifar_stem' expects a bool"),
    ('optimizer=sgd', "config key 'optimizer' is a group"),
    ('batch_size', 'is not of the form'),
    ('objective.projector_hidden=64,x', "config key 'objective.projector_hidden' expects a tuple"),
])
def test_bad_overrides_name_the_key(override, message):
    c = config_lib.load_config('configs/simclr.py')
    with pytest.raises(config_lib.ConfigError, match=message.replace('(', r'\(')):
        configure.apply_overrides(c, [override])


@pytest.mark.parametrize('key, value, message', [
    ('method', 'simclrr', "unknown method 'simclrr'"),
    ('model.backbone', 'resnet19', "unknown backbone 'resnet19'"),
    ('dataset', 'cifar11', "unknown dataset 'cifar11'"),
    ('dtype', 'float16', 'dtype'),
    ('batch_size', 0, 'batch_size'),
])
def test_validation_names_the_problem(key, value, message):
    c = config_lib.load_config('configs/simclr.py')
    node = c
    parts = key.split('.')
    for p in parts[:-1]:
        node = node[p]
    node[parts[-1]] = value
    with pytest.raises(config_lib.ConfigError, match=message):
        configure.validate(c, num_devices=1)


def test_batch_must_split_over_devices_and_data_dir_must_exist(tmp_path):
    c = config_lib.load_config('configs/simclr.py')
    c.batch_size = 100
    with pytest.raises(config_lib.ConfigError, match='not divisible by the number of devices \\(8\\)'):
        configure.validate(c, num_devices=8)
    c.batch_size = 64
    c.dataset = 'image_folder'
    with pytest.raises(config_lib.ConfigError, match='needs config key "data_dir"'):
        configure.validate(c, num_devices=1)
    c.data_dir = str(tmp_path / 'missing')
    with pytest.raises(config_lib.ConfigError, match='does not exist'):
        configure.validate(c, num_devices=1)


def test_variant_arguments():
    with pytest.raises(ValueError, match="unknown config argument 'datset'"):
        config_lib.load_config('configs/simclr.py:datset=cifar10')
    c = config_lib.load_config('configs/simclr.py:dataset=cifar10,epochs=2,batch_size=64')
    assert c.epochs == 2.0 and c.batch_size == 64
    with pytest.raises(config_lib.ConfigError, match='not found'):
        config_lib.load_config('configs/nope.py')


def test_steps_from_epochs():
    c = common.base_config('simclr', 'mnist')
    c.batch_size, c.epochs, c.total_steps = 100, 2.5, 0
    assert config_lib.total_steps(c, 1000) == (25, 10)
    c.total_steps = 7
    assert config_lib.total_steps(c, 1000) == (7, 10)
    c.batch_size = 2000
    with pytest.raises(config_lib.ConfigError, match='larger than the training set'):
        config_lib.total_steps(c, 1000)


METHOD_FILES = sorted(f[:-3] for f in os.listdir(os.path.join(REPO, 'configs'))
                      if f.endswith('.py') and f not in ('common.py', '__init__.py'))


@pytest.mark.parametrize('name', METHOD_FILES)
@pytest.mark.parametrize('variant', ['', ':dataset=cifar10'])
def test_every_method_config_validates_and_builds_its_objective(name, variant):
    from ssljax.objectives import Context, create_objective
    config = config_lib.load_config(f'configs/{name}.py{variant}')
    configure.validate(config, num_devices=1, check_data=False)
    encoder, dim = registry.encoder_from_config(config)  # every config.model key, as the loop passes them
    objective = create_objective(config, Context(encoder=encoder, feature_dim=dim, total_steps=100,
                                                 global_batch=config.batch_size, num_examples=50000))
    assert objective.name == config.method


def test_a_new_evaluator_is_added_by_naming_its_type():
    """--config.evals.NAME.type=TYPE with a new NAME adds that evaluator with its type's defaults (ssljax.main and
    ssljax.evaluate alike); later overrides of evals.NAME change it; an unknown type names the key."""
    from ssljax.evaluation import EVALUATORS
    c = config_lib.load_config(os.path.join(REPO, 'configs', 'simclr.py'))
    configure.apply_overrides(c, ['evals.part.type=part_probe', 'evals.part.epochs=7'])
    assert c.evals.part.type == 'part_probe' and c.evals.part.epochs == 7 and c.evals.part.every == -1
    assert tuple(c.evals.part.area) == tuple(EVALUATORS['part_probe'].defaults['area'])
    configure.validate(c, 1, check_data=False)
    with pytest.raises(config_lib.ConfigError, match='"evals.x.type": unknown evaluator type \'nope\''):
        configure.apply_overrides(c, ['evals.x.type=nope'])
    with pytest.raises(config_lib.ConfigError, match="unknown config key 'evals.y.every'"):
        configure.apply_overrides(c, ['evals.y.every=3'])  # only a type creates an evaluator
