"""The evaluators chosen by name (ssljax/evaluation/framework.py and builtin.py), their runner, the device-resident
encoding, the sharded kNN (1 vs 8 devices) and the `python -m ssljax.evaluate` command line."""
import dataclasses
import functools
import json
import os
import subprocess
import sys
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import REPO

from ssljax import parallel
from ssljax.data import augment, pipeline, sources
from ssljax.evaluation import (
    EVALUATORS,
    EvalRunner,
    Evaluator,
    clustering_metrics,
    knn_top1,
    make_context,
    register_evaluator,
    train_linear_probe,
    validate_evals,
)
from ssljax.models import registry
from ssljax.objectives.base import Objective


def small_config(**evals):
    from configs import common
    c = common.base_config('simclr', 'digits', 'resnet_tiny')
    c.eval.batch_size = 96
    c.evals.knn.k = 20
    c.evals.linear.epochs = 3
    c.evals.diagnostics.max_examples = 100
    for name, settings in evals.items():
        c.evals[name] = settings
    return c


class FakeObjective:
    """What evaluators need of an objective: its default network and encoder_variables (the base class's)."""
    name = 'fake'

    def __init__(self, eval_network='online'):
        self.eval_network = eval_network

    encoder_variables = Objective.encoder_variables


@functools.partial(jax.jit, static_argnums=0)
def _init_encoder(encoder, key):
    return encoder.init(key, jnp.zeros((2, 8, 8, 3)), train=False)


def init_encoder(encoder, seed):
    """``encoder.init`` (its own initialisers: Kaiming fan-out convs, zero-gamma residual BN), compiled once, from an
    RBG key: a default (threefry) key's bit generator costs XLA CPU seconds to compile per parameter shape; the
    weights' distribution is the initialisers', only the random bits come from another generator."""
    return _init_encoder(encoder, jax.random.key(seed, impl='rbg'))


def encoder_state(seed, encoder, dim, target_seed=None, num_classes=10):
    v = init_encoder(encoder, seed)
    objective_state = {}
    if target_seed is not None:
        t = init_encoder(encoder, target_seed)
        objective_state = {'target': {'params': {'encoder': t['params']}, 'batch_stats': {'encoder': t['batch_stats']}}}
    rng = np.random.default_rng(seed)
    probe = {'kernel': jnp.asarray(rng.normal(size=(dim, num_classes)), jnp.float32),
             'bias': jnp.asarray(rng.normal(size=num_classes), jnp.float32)}
    return types.SimpleNamespace(params={'encoder': v['params']}, batch_stats={'encoder': v['batch_stats']},
                                 objective_state=objective_state, probe_params=probe, step=0)


@pytest.fixture(scope='module')
def setup(tmp_path_factory):
    encoder, dim = registry.create_encoder('resnet_tiny', cifar_stem=True)
    train = pipeline.subsample(sources.load_split('digits', 'train'), 300, 0)
    test = sources.load_split('digits', 'test')  # 357 images: not a multiple of the eval batch
    exp = types.SimpleNamespace(mesh=parallel.make_mesh(), encoder=encoder, objective=FakeObjective(),
                                views=augment.recipe('simclr', 8, blur_prob=0.0), eval_size=8, num_classes=10)
    workdir = str(tmp_path_factory.mktemp('evals'))
    ctx = make_context(small_config(), exp, train, test, workdir)
    return types.SimpleNamespace(ctx=ctx, exp=exp, dim=dim, state=encoder_state(0, encoder, dim, target_seed=1),
                                 workdir=workdir)


def direct_features(ctx, variables, images):
    """Reference: the encoder on the eval view of all images at once, on the host."""
    @jax.jit
    def pooled(variables, images):
        x = augment.eval_view(images, ctx.eval_size, ctx.mean, ctx.std)
        return ctx.encoder.apply(variables, x, train=False)['pooled']
    return np.asarray(pooled(variables, jnp.asarray(images)), np.float32)


# ------------------------------------------------------------------------------------------------ every evaluator

def test_runner_runs_every_evaluator_once_per_split(setup):
    ctx, state = setup.ctx, setup.state
    runner = EvalRunner(ctx)
    before = ctx.encode_count
    assert runner.run(state, 7) == {}  # nothing is due: every evaluator runs at the end only (eval_every = 0)
    out = runner.run(state, 7, final=True)
    assert ctx.encode_count - before == 2  # train and test of the online network, shared by all five evaluators
    assert set(out) == {'knn_top1', 'online_probe_top1', 'linear_top1', 'clustering_nmi', 'clustering_ari',
                        'clustering_acc', 'diagnostics_rankme', 'diagnostics_alignment', 'diagnostics_uniformity',
                        'diagnostics_feature_std'}
    for key in ('knn_top1', 'online_probe_top1', 'linear_top1', 'clustering_nmi', 'clustering_acc'):
        assert 0.0 <= out[key] <= 1.0, key
    assert out['knn_top1'] > 0.3  # a random conv net on digits is far above chance (0.1)
    assert -1.0 <= out['clustering_ari'] <= 1.0
    assert 1.0 <= out['diagnostics_rankme'] <= setup.dim
    assert 0.0 < out['diagnostics_alignment'] <= 4.0 and -4.0 <= out['diagnostics_uniformity'] <= 0.0
    assert 0.0 < out['diagnostics_feature_std'] <= 1.0
    assert os.path.isfile(os.path.join(setup.workdir, 'figures', 'diagnostics_spectrum_0000007.png'))
    assert not ctx._cache  # features are dropped after the run
    assert runner.run(state, 7, final=True) == out  # deterministic


def test_features_knn_online_probe_linear_against_references(setup):
    ctx, state = setup.ctx, setup.state
    variables = ctx.encoder_variables(state, 'online')
    train_f = direct_features(ctx, variables, ctx.train.images)
    test_f = direct_features(ctx, variables, ctx.test.images)
    feats = ctx.features(state, '', 'test')
    assert feats.values.shape == (4, 96, setup.dim)  # 357 rows in blocks of 96, zero-padded
    np.testing.assert_allclose(feats.host(), test_f, rtol=1e-4, atol=1e-5)
    ctx.clear_cache()

    out = EvalRunner(ctx, names=('knn', 'online_probe', 'linear')).run(state, 1, final=True)
    labels_tr, labels_te = ctx.train.labels, ctx.test.labels
    assert out['knn_top1'] == pytest.approx(knn_top1(train_f, labels_tr, test_f, labels_te, 10, k=20), abs=1e-9)
    logits = test_f @ np.asarray(state.probe_params['kernel']) + np.asarray(state.probe_params['bias'])
    assert out['online_probe_top1'] == pytest.approx(np.mean(logits.argmax(1) == labels_te), abs=1e-9)
    want = train_linear_probe(train_f, labels_tr, test_f, labels_te, 10, epochs=3, batch_size=256, lr=0.1,
                              seed=ctx.seed)['top1']
    assert out['linear_top1'] == pytest.approx(want, abs=2 / len(labels_te))


# --------------------------------------------------------------------------------------------------- clustering

def test_clustering_metrics_hand_computed():
    # Contingency (cluster x class): c0 = {0: 1, 1: 2}, c1 = {0: 2, 2: 1}, c2 = {2: 2}; the best one-to-one map
    # c1 -> 0, c0 -> 1, c2 -> 2 gets 2 + 2 + 2 = 6 of 8.
    true = [0, 0, 0, 1, 1, 2, 2, 2]
    pred = [1, 1, 0, 0, 0, 2, 2, 1]
    assert clustering_metrics(true, pred)['acc'] == pytest.approx(0.75)
    assert clustering_metrics(true, true) == pytest.approx(dict(nmi=1.0, ari=1.0, acc=1.0))
    assert clustering_metrics(true, [(3 * t + 1) % 5 for t in true]) == pytest.approx(dict(nmi=1.0, ari=1.0, acc=1.0))


class ClusteringObjective(FakeObjective):
    """Reads a cluster id written into each image's pixel value (v = 20 * id + 10), through the eval view."""

    def cluster_assignments(self, variables, images):
        x = images[..., 0].mean(axis=(1, 2)) * 0.229 + 0.485  # undo the eval view's normalisation (channel 0)
        return jnp.round((x * 255.0 - 10.0) / 20.0).astype(jnp.int32)


def clustering_context(setup, labels, ids):
    images = np.broadcast_to((20 * np.asarray(ids) + 10).astype(np.uint8)[:, None, None, None],
                             (len(ids), 8, 8, 3)).copy()
    split = sources.Split(images=images, labels=np.asarray(labels, np.int32), class_names=(), name='ids')
    exp = types.SimpleNamespace(**{**vars(setup.exp), 'objective': ClusteringObjective()})
    return make_context(small_config(), exp, split, split)


@pytest.mark.parametrize('ids, want', [
    ([0, 0, 0, 1, 1, 2, 2, 2], 1.0),          # perfect
    ([4, 4, 4, 0, 0, 7, 7, 7], 1.0),          # the same partition, renamed
    ([1, 1, 0, 0, 0, 2, 2, 1], None),         # the hand-computed case above: acc 0.75
])
def test_clustering_evaluator_uses_objective_assignments(setup, ids, want):
    labels = [0, 0, 0, 1, 1, 2, 2, 2]
    ctx = clustering_context(setup, labels, ids)
    out = EvalRunner(ctx, names=('clustering',)).run(setup.state, 0, final=True)
    if want is not None:
        assert out == pytest.approx({'clustering_nmi': 1.0, 'clustering_ari': 1.0, 'clustering_acc': 1.0})
    else:
        assert out['clustering_acc'] == pytest.approx(0.75)
        assert out['clustering_nmi'] < 1.0 and out['clustering_ari'] < 1.0


# ------------------------------------------------------------------------------------------------------ networks

def test_network_selection(setup):
    ctx, state = setup.ctx, setup.state
    online = ctx.features(state, 'online', 'test').host()
    target = ctx.features(state, 'target', 'test').host()
    ctx.clear_cache()
    assert not np.allclose(online, target)
    want = direct_features(ctx, ctx.encoder_variables(state, 'target'), ctx.test.images)
    np.testing.assert_allclose(target, want, rtol=1e-4, atol=1e-5)

    # '' is the objective's eval_network; an evaluator's network setting picks another one.
    default_target = dataclasses.replace(ctx, objective=FakeObjective(eval_network='target'))
    np.testing.assert_allclose(default_target.features(state, '', 'test').host(), target, rtol=1e-6)
    c = small_config()
    c.evals.knn.network = 'target'
    by_name = EvalRunner(dataclasses.replace(ctx, config=c), names=('knn',)).run(state, 0, final=True)
    assert by_name == EvalRunner(default_target, names=('knn',)).run(state, 0, final=True)

    # A network the state does not have: one error naming the key.
    c.evals.knn.network = 'teacher'
    runner = EvalRunner(dataclasses.replace(ctx, config=c), names=('knn',))
    with pytest.raises(ValueError, match=r'evals\.knn\.network.*teacher.*online, target'):
        runner.check_networks(state)
    with pytest.raises(ValueError, match=r'evals\.knn\.network'):
        runner.run(state, 0, final=True)


class ReadOnlySource:
    """A random-access source (as streamed datasets are): len and get(indices) only."""

    def __init__(self, split):
        self.split = split

    def __len__(self):
        return len(self.split)

    def get(self, indices):
        return self.split.get(indices)


def test_train_features_of_any_source(setup):
    ctx, state = setup.ctx, setup.state
    runner = EvalRunner(ctx, names=('knn',))
    want = direct_features(ctx, ctx.encoder_variables(state, 'online'), ctx.test.images)
    for source in (ctx.test, ReadOnlySource(ctx.test)):
        got = runner.train_features(state, '', source)
        assert got.shape == want.shape and got.dtype == np.float32
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(runner.train_features(state), ctx.features(state, '', 'train').host(), rtol=1e-6)


# ----------------------------------------------------------------------------------------------------- scheduling

@register_evaluator
class CountingEvaluator(Evaluator):
    """Registered from outside the package: counts its runs."""
    type = 'test_counting'
    defaults = dict(value=1.5)
    calls: list = []

    def run(self, state, step):
        CountingEvaluator.calls.append((self.name, step))
        return {'value': self.settings.value, 'step': step}


def test_runner_schedule_and_names(setup):
    c = small_config()
    c.eval_every = 3
    c.evals = dict(a=dict(type='test_counting', every=2), b=dict(type='test_counting', every=0, value=2.0),
                   c=dict(type='test_counting'))  # every -1: eval_every
    c.eval.baseline_evals = ('b',)
    runner = EvalRunner(dataclasses.replace(setup.ctx, config=c))
    assert runner.every == {'a': 2, 'b': 0, 'c': 3}
    assert [runner.due(s) for s in (1, 2, 3, 4, 6)] == [(), ('a',), ('c',), ('a',), ('a', 'c')]
    CountingEvaluator.calls.clear()
    assert runner.run(setup.state, 6) == {'a_value': 1.5, 'a_step': 6.0, 'c_value': 1.5, 'c_step': 6.0}  # due ones
    assert runner.run(setup.state, 5) == {}
    assert runner.run(setup.state, 9, names=c.eval.baseline_evals) == {'b_value': 2.0, 'b_step': 9.0}
    assert set(runner.run(setup.state, 10, final=True)) == {f'{n}_{k}' for n in 'abc' for k in ('value', 'step')}
    assert CountingEvaluator.calls == [('a', 6), ('c', 6), ('b', 9), ('a', 10), ('b', 10), ('c', 10)]
    assert EvalRunner(dataclasses.replace(setup.ctx, config=c), names=('c',)).names == ('c',)
    with pytest.raises(ValueError, match='unknown evaluator'):
        runner.run(setup.state, 1, names=('knn',))
    c.eval_every = 0
    assert EvalRunner(dataclasses.replace(setup.ctx, config=c)).every['c'] == 0


@pytest.mark.parametrize('edit, key', [
    (lambda c: c.evals.update({'foo': dict(type='nope')}), r'evals\.foo\.type'),
    (lambda c: c.evals.knn.update({'kk': 3}), r'evals\.knn\.kk'),
    (lambda c: c.evals.linear.update({'k': 3}), r'evals\.linear\.k'),
    (lambda c: setattr(c.evals, 'knn', dict(type='knn', k='many')), r'evals\.knn\.k\b'),
    (lambda c: setattr(c.evals.knn, 'network', 'student'), r'evals\.knn\.network'),
    (lambda c: setattr(c.evals.knn, 'every', -2), r'evals\.knn\.every'),
    (lambda c: setattr(c.evals.knn, 'k', 0), r'evals\.knn\.k\b'),
    (lambda c: setattr(c.evals.clustering, 'num_clusters', -1), r'evals\.clustering\.num_clusters'),
    (lambda c: setattr(c.eval, 'baseline_evals', ('knn', 'linar')), r'eval\.baseline_evals.*linar'),
])
def test_bad_evals_config_names_the_key(edit, key):
    c = small_config()
    validate_evals(c)
    edit(c)
    with pytest.raises(ValueError, match=key):
        validate_evals(c)


def test_registry_has_the_builtin_types():
    assert {'knn', 'online_probe', 'linear', 'clustering', 'diagnostics'} <= set(EVALUATORS)
    assert isinstance(EVALUATORS['knn'].defaults, dict)


# ------------------------------------------------------------------------------------------- 1 vs 8 devices

EIGHT_DEVICES_SCRIPT = r'''
import json, sys, types
sys.path.insert(0, 'tests')
import jax, numpy as np
assert jax.device_count() == 8, jax.devices()
from ssljax import parallel
from ssljax.data import augment, pipeline, sources
from ssljax.evaluation import EvalRunner, knn, make_context
from ssljax.models import registry
import test_evaluators as t

rng = np.random.default_rng(0)
out = {'flat': [], 'blocked': []}
mesh8 = parallel.make_mesh()
for n, q, k in ((203, 37, 20), (203, 37, 500), (5, 9, 3)):
    bank = rng.normal(size=(n, 16)).astype(np.float32)
    labels = rng.integers(0, 7, n)
    queries = rng.normal(size=(q, 16)).astype(np.float32)
    ref = np.asarray(knn.knn_predict(bank, labels, queries, 7, k=k, chunk=16))
    got = np.asarray(knn.knn_predict_sharded(bank, labels, queries, 7, mesh8, k=k, chunk=16))
    out['flat'].append(bool((ref == got).all()))
    # Blocked layout [nb, B, D] whose padding rows are the queries themselves: they must never be chosen.
    B = 24
    nb = -(-n // B)
    blocked = np.resize(queries, (nb * B, 16))
    blocked[:n] = bank
    blabels = np.full(nb * B, 6)
    blabels[:n] = labels
    got = np.asarray(knn.knn_predict_sharded(blocked.reshape(nb, B, 16), blabels.reshape(nb, B), queries, 7, mesh8,
                                             k=k, chunk=16, num_valid=n))
    out['blocked'].append(bool((ref == got).all()))

# The runner on 8 devices (compared with the module's 1-device fixture by the test).
encoder, dim = registry.create_encoder('resnet_tiny', cifar_stem=True)
train = pipeline.subsample(sources.load_split('digits', 'train'), 300, 0)
test = sources.load_split('digits', 'test')
state = t.encoder_state(0, encoder, dim)
exp = types.SimpleNamespace(mesh=mesh8, encoder=encoder, objective=t.FakeObjective(),
                            views=augment.recipe('simclr', 8, blur_prob=0.0), eval_size=8, num_classes=10)
ctx = make_context(t.small_config(), exp, train, test)
feats = ctx.features(state, '', 'test')
assert len(feats.values.sharding.device_set) == 8
out.update(features=feats.host().tolist(),
           results=EvalRunner(ctx, names=('knn', 'online_probe')).run(state, 0, final=True))
print('RESULT' + json.dumps(out))
'''


@pytest.mark.skipif(jax.default_backend() != 'cpu', reason='checks the XLA CPU lowering')
def test_sharded_knn_scores_the_bank_with_top_k_not_a_sort():
    # Only the merge of the n * k candidates may be a sort; a sort over the bank made the monitor 15x slower on CPU.
    from ssljax.evaluation.knn import _sharded_knn_fn
    fn = _sharded_knn_fn(parallel.make_mesh(jax.devices()[:1]), 5, 10, 8)
    hlo = fn.lower(jnp.zeros((2, 150, 16)), jnp.zeros((2, 150), jnp.int32), jnp.int32(290), jnp.zeros((16, 16)),
                   jnp.float32(0.1)).compile().as_text()
    sorts = [line for line in hlo.splitlines() if ' sort(' in line]
    assert 'TopK' in hlo and not any('300]' in line for line in sorts)


def test_sharded_knn_and_runner_on_eight_devices(setup):
    env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=8', JAX_PLATFORMS='cpu')
    r = subprocess.run([sys.executable, '-c', EIGHT_DEVICES_SCRIPT], capture_output=True, text=True, cwd=REPO,
                       env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.split('RESULT')[-1])
    assert out['flat'] == [True] * 3 and out['blocked'] == [True] * 3
    state = encoder_state(0, setup.ctx.encoder, setup.dim)  # the subprocess's state
    np.testing.assert_allclose(out['features'], setup.ctx.features(state, '', 'test').host(), rtol=1e-4, atol=1e-5)
    one = EvalRunner(setup.ctx, names=('knn', 'online_probe')).run(state, 0, final=True)
    assert out['results'] == pytest.approx(one, abs=1e-9)


# ---------------------------------------------------------------------------------------- python -m ssljax.evaluate

@pytest.mark.slow  # end-to-end: runs in .ci/run's slow step (pytest -m slow)
def test_evaluate_command_reproduces_the_runner(tmp_path, capsys):
    """Checkpoints of two states written as the train loop writes them (no training: compiling the train step
    would double this test's time); `python -m ssljax.evaluate` must give the runner's values exactly."""
    from conftest import tiny_config

    from ssljax import checkpoint as ckpt_lib
    from ssljax import evaluate, train
    config = tiny_config('simclr')
    config.evals = dict(knn=dict(type='knn', every=0, network='', k=20),
                        linear=dict(type='linear', every=0, network='', epochs=2),
                        online_probe=dict(type='online_probe', every=0, network=''))
    workdir = str(tmp_path / 'run')
    os.makedirs(workdir)
    run = train.setup(config, workdir)
    leaves, tree = jax.tree.flatten(run.state.params)
    noisy = [x + 0.5 * jnp.std(x) * jax.random.normal(jax.random.key(i), x.shape) for i, x in enumerate(leaves)]
    states = {2: run.state, 4: run.state.replace(params=jax.tree.unflatten(tree, noisy))}
    with open(os.path.join(workdir, 'config.json'), 'w') as f:
        json.dump(config.to_dict(), f)
    ckpt = ckpt_lib.Checkpointer(workdir, 3)
    for step, state in states.items():
        ckpt.save(step, state)
    ckpt.close()
    want = {step: run.runner.run(state, step, final=True) for step, state in states.items()}
    assert want[2] != want[4]

    assert evaluate.run(['--workdir', workdir]) == 0  # the latest: step 4
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    saved = json.load(open(os.path.join(workdir, 'eval_4.json')))
    assert printed == saved == {'step': 4, **want[4]}  # exactly: same data, subsample, features and probe seed
    assert evaluate.run(['--workdir', workdir, '--step', '2', '--config.evals.knn.k=5']) == 0
    saved = json.load(open(os.path.join(workdir, 'eval_2.json')))
    assert saved['linear_top1'] == want[2]['linear_top1'] and saved['knn_top1'] != want[2]['knn_top1']

    capsys.readouterr()
    for args, message in ((['--step', '3'], 'no checkpoint of step 3 in'),
                          (['--config.evals.knn.kk=3'], "unknown config key 'evals.knn.kk'"),
                          (['--config.evals.knn.k=0'], 'evals.knn.k')):
        assert evaluate.run(['--workdir', workdir, *args]) != 0
        err = capsys.readouterr().err.strip()
        assert err.startswith('ssljax: error: ') and message in err and '\n' not in err, err
    os.makedirs(tmp_path / 'empty')
    assert evaluate.run(['--workdir', str(tmp_path / 'empty')]) == 2
    assert 'no config.json' in capsys.readouterr().err
    with open(tmp_path / 'empty' / 'config.json', 'w') as f:
        json.dump(config.to_dict(), f)
    assert evaluate.run(['--workdir', str(tmp_path / 'empty')]) == 2
    assert 'no checkpoint in' in capsys.readouterr().err
    assert not os.path.exists(tmp_path / 'empty' / 'checkpoints')  # nothing created
