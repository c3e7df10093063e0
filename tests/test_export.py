"""Commands that read a saved run: `python -m ssljax.export` (and load_encoder), `python -m ssljax.cka`, and
`python -m ssljax.evaluate` adding evaluators to a finished run.

Export and CKA read only config.json and the checkpoint's params / batch_stats / objective_state, so their workdir
(`saved`) holds a BYOL config and checkpoints of just those trees, filled at random without compiling anything:
step 2 has online = target, step 4 a different online encoder (the target unchanged). The evaluate test needs a
checkpoint of the loop's whole TrainState, written as the train loop writes it (`finished`, no training)."""
import functools
import json
import os
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import tiny_config
from test_analysis import random_variables


@pytest.fixture(scope='module')
def saved(tmp_path_factory):
    from ssljax import checkpoint as ckpt_lib
    from ssljax.models import registry
    config = tiny_config('byol')
    workdir = str(tmp_path_factory.mktemp('saved') / 'run')
    os.makedirs(workdir)
    with open(os.path.join(workdir, 'config.json'), 'w') as f:
        json.dump(config.to_dict(), f)
    encoder, _ = registry.create_encoder('resnet_tiny', cifar_stem=config.model.cifar_stem)
    init, trained = (random_variables(encoder, jnp.zeros((2, 8, 8, 3)), seed) for seed in (0, 1))
    networks = {(2, 'online'): init, (2, 'target'): init, (4, 'online'): trained, (4, 'target'): init}
    ckpt = ckpt_lib.Checkpointer(workdir, 3)
    for step in (2, 4):
        online, target = networks[(step, 'online')], networks[(step, 'target')]
        ckpt.save(step, {'step': jnp.asarray(step), 'params': {'encoder': online['params']},
                         'batch_stats': {'encoder': online['batch_stats']},
                         'objective_state': {'target': {'params': {'encoder': target['params']},
                                                        'batch_stats': {'encoder': target['batch_stats']}}}})
    ckpt.close()
    images = jnp.asarray(np.random.default_rng(0).integers(0, 256, (32, 8, 8, 3), dtype=np.uint8))
    return types.SimpleNamespace(workdir=workdir, encoder=encoder, networks=networks, images=images, config=config)


@functools.partial(jax.jit, static_argnums=(0, 3, 4, 5))
def _pooled(module, variables, images, size, mean, std):
    from ssljax.data import augment
    return module.apply(variables, augment.eval_view(images, size, mean, std), train=False)['pooled']


def features(module, variables, images, size=8, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)):
    """The encoder's pooled features of the eval view, compiled once per module and shape (not op by op)."""
    return np.asarray(_pooled(module, variables, jnp.asarray(images), size, tuple(mean), tuple(std)))


# ---------------------------------------------------------------------------------------------------- export

def test_export_writes_safetensors_npz_and_json_that_load_back(saved, capsys):
    from safetensors.numpy import load_file

    from ssljax import export
    assert export.run(['--workdir', saved.workdir]) == 0  # latest step, the evaluated network (BYOL: online)
    out = os.path.join(saved.workdir, 'export')
    short = capsys.readouterr().out.strip().splitlines()
    assert short[-1].startswith('exported resnet_tiny (online network, step 4, ') and short[-1].endswith(
        f'to {out}: encoder.safetensors, encoder.npz, encoder.json') and len(short[-1]) < 250, short
    assert export.run(['--workdir', saved.workdir, '--json']) == 0  # the whole description
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    description = json.load(open(os.path.join(out, 'encoder.json')))
    assert printed['paths']['safetensors'] == os.path.join(out, 'encoder.safetensors')
    for key, want in dict(backbone='resnet_tiny', feature_dim=16, image_size=8, channels=3, step=4, method='byol',
                          network='online', dtype='float32', format='ssljax-encoder').items():
        assert description[key] == want, key
    assert description['model']['backbone'] == 'resnet_tiny' and 'cifar_stem' in description['model']
    assert description['preprocess']['mean'] == [0.485, 0.456, 0.406]

    want_vars = saved.networks[(4, 'online')]
    want = features(saved.encoder, want_vars, saved.images)
    flat = load_file(os.path.join(out, 'encoder.safetensors'))  # plain safetensors: '/'-joined names
    np.testing.assert_array_equal(flat['params/stem_conv/kernel'], want_vars['params']['stem_conv']['kernel'])
    assert 'batch_stats/stem_bn/var' in flat
    assert description['num_params'] == sum(v.size for k, v in flat.items() if k.startswith('params/'))
    for path in (out, os.path.join(out, 'encoder.npz'), os.path.join(out, 'encoder.safetensors'),
                 os.path.join(out, 'encoder.json')):
        module, variables = export.load_encoder(path)
        np.testing.assert_array_equal(features(module, variables, saved.images), want)  # identical features


def test_export_of_another_network_and_step(saved, tmp_path, capsys):
    from ssljax import export
    out = str(tmp_path / 'target')
    assert export.run(['--workdir', saved.workdir, '--network', 'target', '--out', out]) == 0
    module, variables = export.load_encoder(out)
    target = features(module, variables, saved.images)
    np.testing.assert_array_equal(target, features(saved.encoder, saved.networks[(4, 'target')],
                                                   saved.images))
    assert not np.allclose(target, features(saved.encoder, saved.networks[(4, 'online')], saved.images))
    restored = export.restore_encoder(saved.workdir, step=2)
    assert restored.step == 2 and restored.network == 'online'
    capsys.readouterr()
    assert export.run(['--workdir', saved.workdir, '--step', '3', '--out', str(tmp_path / 'x')]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith('ssljax: error: no checkpoint of step 3') and '\n' not in err
    assert not os.path.exists(tmp_path / 'x')
    with pytest.raises(ValueError, match='not an exported encoder'):
        export.load_encoder(os.path.join(saved.workdir, 'config.json.txt'))


# ------------------------------------------------------------------------------------------------------- CKA

def test_cka_command_between_two_encoders(saved, tmp_path):
    from ssljax import cka
    from ssljax.data import augment, pipeline
    from ssljax.evaluation.analysis import layer_features
    out = str(tmp_path / 'cka')
    # Step 4's online encoder (noisy) against its target (the initial weights).
    assert cka.run(['--workdir_a', saved.workdir, '--workdir_b', saved.workdir, '--network_b', 'target',
                    '--max_examples', '200', '--out', out]) == 0
    result = json.load(open(os.path.join(out, 'cka.json')))
    assert os.path.isfile(os.path.join(out, 'cka.png'))
    assert result['layers_a'] == result['layers_b'] == ['stage1', 'stage2', 'output']
    assert result['dims_a'] == [8, 16, 16] and result['num_examples'] == 200
    assert (result['step_a'], result['network_a'], result['step_b'], result['network_b']) == (4, 'online', 4, 'target')
    # Against linear_cka of the layers computed directly on the same images (A's seeded subset of its test split).
    images = pipeline.load_split(saved.config, 'test', 200).images
    x = augment.eval_view(jnp.asarray(images), 8, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    encoder = saved.encoder
    layers = {}
    stages = jax.jit(lambda variables, x: layer_features(encoder, variables, x))
    for net in ('online', 'target'):
        variables = saved.networks[(4, net)]
        layers[net] = [*stages(variables, x).values(), features(encoder, variables, images)]
    want = [[cka.linear_cka(a, b) for b in layers['target']] for a in layers['online']]
    np.testing.assert_allclose(result['cka'], want, atol=1e-5)
    assert max(result['cka'][i][i] for i in range(3)) < 0.999  # different weights: no layer is the same


# ------------------------------------------------------------------------- evaluate: adding evaluators to a run

@pytest.fixture(scope='module')
def finished(tmp_path_factory):
    """A SimCLR workdir with the checkpoint of step 4 (the initial state) and config.json, as the loop leaves them."""
    from ssljax import checkpoint as ckpt_lib
    from ssljax import train
    config = tiny_config('simclr')
    config.evals = dict(knn=dict(type='knn', every=0, network='', k=20),
                        linear=dict(type='linear', every=0, network='', epochs=2))
    config.eval.baseline_evals = ('knn',)
    workdir = str(tmp_path_factory.mktemp('finished') / 'run')
    os.makedirs(workdir)
    run = train.setup(config, workdir)
    with open(os.path.join(workdir, 'config.json'), 'w') as f:
        json.dump(config.to_dict(), f)
    ckpt = ckpt_lib.Checkpointer(workdir, 3)
    ckpt.save(4, run.state)
    ckpt.close()
    return workdir


def test_evaluate_adds_evaluators_to_a_finished_run(finished, capsys):
    from ssljax import evaluate
    workdir = finished
    path = os.path.join(workdir, 'eval_4.json')
    with open(path, 'w') as f:  # an earlier evaluation of this step
        json.dump({'step': 4, 'knn_top1': 0.25, 'part_part_top1': 0.0, 'part_stale': 1.0}, f)
    assert evaluate.run(['--workdir', workdir, '--config.evals.part.type=part_probe', '--config.evals.part.epochs=2',
                         '--config.evals.part.area=(0.2,0.4)', '--only', 'part,linear']) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(printed) == {'step', 'part_whole_top1', 'part_part_top1', 'linear_top1'}
    assert printed['part_whole_top1'] == printed['linear_top1']  # the same probe on the same features
    saved_values = json.load(open(path))
    # knn did not run: its earlier value is kept; part's values are replaced (its stale key dropped).
    assert saved_values == {**printed, 'knn_top1': 0.25}

    for args, message in ((['--config.evals.part.type=nope'], 'config key "evals.part.type": unknown evaluator type'),
                          (['--config.evals.part.type=part_probe', '--config.evals.part.area=(0.5,0.1)'],
                           'evals.part.area'),
                          (['--only', 'knn,nope'], "'nope'")):
        assert evaluate.run(['--workdir', workdir, *args]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith('ssljax: error: ') and message in err and '\n' not in err, err
