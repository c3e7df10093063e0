"""Analysis: part boxes, balanced few-label subsets, linear CKA (against the HSIC definition), layer features read
through capture_intermediates, and the part_probe / layer_probe / few_label evaluators against direct computations."""
import json
import os
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ssljax import parallel
from ssljax.cka import cka_matrix, linear_cka
from ssljax.config_lib import ConfigError
from ssljax.data import augment, pipeline, sources
from ssljax.evaluation import EvalRunner, make_context, train_linear_probe, validate_evals
from ssljax.evaluation.analysis import PartProbe, balanced_subset, crop_parts, fraction_tag, layer_features, part_boxes
from ssljax.models import registry
from ssljax.objectives.base import Objective

# ------------------------------------------------------------------------------------------------------ part boxes

@pytest.mark.parametrize('height,width', [(8, 8), (32, 32), (20, 60), (224, 160)])
def test_part_boxes_have_the_area_and_ratio_asked_and_lie_inside(height, width):
    boxes = part_boxes(3, 2000, height, width, area=(0.1, 0.3), ratio=(3 / 4, 4 / 3))
    assert boxes.shape == (2000, 4) and boxes.dtype == np.float32
    top, left, h, w = boxes.astype(np.float64).T
    frac = h * w / (height * width)
    assert frac.min() >= 0.1 - 1e-5 and frac.max() <= 0.3 + 1e-5
    assert frac.min() < 0.11 and frac.max() > 0.29  # the whole range is used (uniform in area)
    assert np.all(top >= 0) and np.all(left >= 0)
    assert np.all(top + h <= height + 1e-4) and np.all(left + w <= width + 1e-4)
    if height == width:  # the ratio range is always feasible: w / h stays in it
        assert np.all(w / h >= 3 / 4 - 1e-5) and np.all(w / h <= 4 / 3 + 1e-5)


def test_part_boxes_are_seeded_deterministic_and_prefix_stable():
    a = part_boxes(0, 50, 32, 32)
    np.testing.assert_array_equal(a, part_boxes(0, 50, 32, 32))
    np.testing.assert_array_equal(a[:10], part_boxes(0, 10, 32, 32))  # box i does not depend on n
    assert not np.allclose(a, part_boxes(1, 50, 32, 32))
    assert not np.allclose(a, part_boxes((0, 1), 50, 32, 32))
    np.testing.assert_array_equal(part_boxes(jax.random.key(5), 4, 8, 8), part_boxes(jax.random.key(5), 4, 8, 8))
    fixed = part_boxes(0, 20, 10, 10, area=(0.25, 0.25), ratio=(1.0, 1.0))
    np.testing.assert_allclose(fixed[:, 2:], 5.0, rtol=1e-6)  # a quarter of the area, square: 5 x 5
    with pytest.raises(ValueError, match='area'):
        part_boxes(0, 4, 8, 8, area=(0.3, 0.1))
    with pytest.raises(ValueError, match='ratio'):
        part_boxes(0, 4, 8, 8, ratio=(0.0, 1.0))


def test_crop_parts_is_the_resized_box_normalised():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (2, 8, 8, 3), dtype=np.uint8)
    boxes = np.array([[[2, 4, 4, 4], [0, 0, 8, 8]], [[1, 2, 3, 5], [4, 0, 4, 8]]], np.float32)
    out = np.asarray(crop_parts(jnp.asarray(images), jnp.asarray(boxes), 4, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)))
    assert out.shape == (4, 4, 4, 3)
    # An integer box resized to its own size is the exact slice.
    np.testing.assert_allclose(out[0], (images[0, 2:6, 4:8] / 255 - 0.5) / 0.25, atol=1e-5)
    # Row b P + p is part p of image b.
    for b in range(2):
        for p in range(2):
            want = augment.resized_crop(jnp.asarray(images[b] / 255, jnp.float32), boxes[b, p], 4)
            np.testing.assert_allclose(out[2 * b + p], (np.asarray(want) - 0.5) / 0.25, atol=1e-5)


# ------------------------------------------------------------------------------------------------ few-label subsets

def test_balanced_subset_counts_determinism_and_seeds():
    labels = np.repeat(np.arange(10), [50, 60, 70, 80, 90, 100, 110, 120, 130, 140])  # 950, imbalanced
    labels = np.concatenate([labels, -np.ones(50, int)])                                # and 50 unlabelled
    rows = balanced_subset(labels, 0.1, seed=0)
    counts = np.bincount(labels[rows], minlength=10)
    assert rows.size == 95 and np.all(labels[rows] >= 0)  # round(0.1 x 950 labelled)
    assert counts.max() - counts.min() <= 1 and sorted(counts) == [9] * 5 + [10] * 5
    assert np.array_equal(rows, np.unique(rows))  # sorted, no repeats
    np.testing.assert_array_equal(rows, balanced_subset(labels, 0.1, seed=0))
    assert not np.array_equal(rows, balanced_subset(labels, 0.1, seed=1))
    even = balanced_subset(labels, 0.2, seed=3)
    assert np.all(np.bincount(labels[even], minlength=10) == 19)  # 190 = 10 x 19: exactly equal
    tiny = balanced_subset(labels, 0.001, seed=0)
    assert np.all(np.bincount(labels[tiny], minlength=10) == 1)  # at least one per class
    few = np.repeat(np.arange(3), [2, 20, 20])
    counts = np.bincount(few[balanced_subset(few, 0.75, seed=0)])  # 32 asked: shares 11, 11, 10
    assert counts[0] == 2 and sorted(counts[1:]) in ([10, 11], [11, 11])  # class 0 gives all it has
    with pytest.raises(ValueError, match='fraction'):
        balanced_subset(labels, 0.0)
    assert fraction_tag(0.01) == '1pct' and fraction_tag(0.1) == '10pct' and fraction_tag(0.005) == '0p5pct'


# ------------------------------------------------------------------------------------------------------ linear CKA

def hsic_cka(x, y):
    """CKA by the definition: HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L)), HSIC(K, L) = tr(K H L H) / (n - 1)^2."""
    n = x.shape[0]
    h = np.eye(n) - np.ones((n, n)) / n
    k, l_ = x @ x.T, y @ y.T
    hsic = lambda a, b: np.trace(a @ h @ b @ h) / (n - 1) ** 2  # noqa: E731
    return hsic(k, l_) / np.sqrt(hsic(k, k) * hsic(l_, l_))


def test_linear_cka_against_hsic_and_its_properties():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 6))
    y = x @ rng.normal(size=(6, 9)) + 0.5 * rng.normal(size=(40, 9))
    wide = rng.normal(size=(40, 70))  # n < d: the Gram form
    for a, b in ((x, y), (y, x), (x, wide), (wide, y)):
        assert linear_cka(a, b) == pytest.approx(hsic_cka(a, b), rel=1e-10)
    assert 0.0 < linear_cka(x, y) < 1.0
    assert linear_cka(x, x) == pytest.approx(1.0, abs=1e-12)
    assert linear_cka(x, 3.0 * x + 7.0) == pytest.approx(1.0, abs=1e-12)  # scaling and a shift
    q, _ = np.linalg.qr(rng.normal(size=(6, 6)))
    assert linear_cka(x @ q, y) == pytest.approx(linear_cka(x, y), rel=1e-10)        # orthogonal transform
    assert linear_cka(2.5 * x, 0.1 * y) == pytest.approx(linear_cka(x, y), rel=1e-10)  # isotropic scaling
    # Not invariant to an arbitrary invertible map (a stretch of one direction).
    assert abs(linear_cka(x * np.array([50, 1, 1, 1, 1, 1]), y) - linear_cka(x, y)) > 1e-3
    # Orthogonal after centring: features spanning disjoint parts of the mean-free subspace.
    basis, _ = np.linalg.qr(np.concatenate([np.ones((40, 1)), rng.normal(size=(40, 10))], axis=1))
    a, b = basis[:, 1:6] @ rng.normal(size=(5, 5)), basis[:, 6:11] @ rng.normal(size=(5, 3))
    assert linear_cka(a, b) == pytest.approx(0.0, abs=1e-12)
    assert np.isnan(linear_cka(np.ones((5, 2)), x[:5]))  # constant features: undefined
    layers_a, layers_b = [x, y, a], [y, wide]
    want = np.array([[linear_cka(p, q) for q in layers_b] for p in layers_a])
    np.testing.assert_allclose(cka_matrix(layers_a, layers_b), want, atol=1e-5)


# --------------------------------------------------------------------------------------------- layer features

def random_variables(module, x, seed):
    """Variables of ``module`` filled at random on the host (He-scaled kernels, BatchNorm scale and running variance
    in [0.5, 1.5]): no compiled init, which costs seconds on 2 cores."""
    rng = np.random.default_rng(seed)

    def fill(path, leaf):
        name = path[-1].key
        if name == 'kernel':
            return jnp.asarray(rng.normal(size=leaf.shape) * np.sqrt(2 / np.prod(leaf.shape[:-1])), leaf.dtype)
        if name in ('scale', 'var'):
            return jnp.asarray(rng.uniform(0.5, 1.5, leaf.shape), leaf.dtype)
        return jnp.asarray(0.1 * rng.normal(size=leaf.shape), leaf.dtype)
    return jax.tree_util.tree_map_with_path(fill, jax.eval_shape(lambda: module.init(jax.random.key(0), x,
                                                                                     train=False)))


def test_layer_features_of_resnet_and_vit():
    from flax import linen as nn

    from ssljax.models.resnet import BasicBlock
    x = jnp.asarray(np.random.default_rng(0).normal(size=(3, 8, 8, 3)), jnp.float32)
    resnet, _ = registry.create_encoder('resnet_tiny', cifar_stem=True)
    variables = random_variables(resnet, x, 1)

    @jax.jit
    def resnet_outputs(v, x):
        _, captured = resnet.apply(v, x, train=False, capture_intermediates=True, mutable=['intermediates'])
        stage1 = captured['intermediates']['stage1_block1']['__call__'][0]  # [B, h, w, C]
        # Stage 2's block run on its own on the captured stage-1 output: the encoder's pooled output if stage 1 is
        # what the encoder computed there.
        stage2 = BasicBlock(width=16, stride=2).apply({k: v[k]['stage2_block1'] for k in ('params', 'batch_stats')},
                                                      stage1, train=False)
        return layer_features(resnet, v, x), stage1, stage2, resnet.apply(v, x, train=False)['pooled']

    feats, stage1, stage2, pooled = resnet_outputs(variables, x)
    assert [(k, v.shape) for k, v in feats.items()] == [('stage1', (3, 8)), ('stage2', (3, 16))]
    np.testing.assert_allclose(feats['stage1'], stage1.mean(axis=(1, 2)), atol=1e-6)
    np.testing.assert_allclose(stage2.mean(axis=(1, 2)), pooled, atol=1e-5)
    np.testing.assert_allclose(feats['stage2'], pooled, atol=1e-6)
    r18, _ = registry.create_encoder('resnet18', cifar_stem=True)
    shapes = jax.eval_shape(lambda: layer_features(r18, r18.init(jax.random.key(0), x, train=False), x))
    # The last block of each stage (stage<s>_block2), not every block.
    assert {k: v.shape for k, v in shapes.items()} == {'stage1': (3, 64), 'stage2': (3, 128), 'stage3': (3, 256),
                                                        'stage4': (3, 512)}

    vit, _ = registry.create_encoder('vit_test', image_size=8, patch_size=4)
    v = random_variables(vit, x, 2)

    @jax.jit
    def vit_outputs(v, x):
        _, captured = vit.apply(v, x, train=False, capture_intermediates=True, mutable=['intermediates'])
        last = captured['intermediates']['block2']['__call__'][0]  # [B, 1 + N, D], [CLS] first
        # The captured block is what the final LayerNorm reads: applying it must give the encoder's output.
        normed = nn.LayerNorm(epsilon=1e-6).apply({'params': v['params']['norm']}, last)
        return (layer_features(vit, v, x, 'mean'), layer_features(vit, v, x, 'cls'), last, normed,
                vit.apply(v, x, train=False)['pooled'])

    mean, cls, last, normed, pooled = vit_outputs(v, x)
    assert list(mean) == ['block1', 'block2'] and mean['block1'].shape == (3, 32)
    np.testing.assert_allclose(mean['block2'], last[:, 1:].mean(axis=1), atol=1e-6)
    np.testing.assert_allclose(cls['block2'], last[:, 0], atol=1e-6)
    np.testing.assert_allclose(normed[:, 0], pooled, atol=1e-5)
    with pytest.raises(ValueError, match='token_pool'):
        layer_features(vit, v, x, 'max')


# ------------------------------------------------------------------------------------------------- the evaluators

class FakeObjective:
    name, eval_network = 'fake', 'online'
    encoder_variables = Objective.encoder_variables


def small_config(**evals):
    from configs import common
    c = common.base_config('simclr', 'digits', 'resnet_tiny')
    c.eval.batch_size = 96
    c.eval.baseline_evals = ('linear',)
    c.evals = dict(linear=dict(type='linear', every=0, network='', epochs=3))
    for name, settings in evals.items():
        c.evals[name] = settings
    return c


@pytest.fixture(scope='module')
def setup(tmp_path_factory):
    encoder, dim = registry.create_encoder('resnet_tiny', cifar_stem=True)
    train = pipeline.subsample(sources.load_split('digits', 'train'), 300, 0)
    test = sources.load_split('digits', 'test')  # not a multiple of the eval batch
    exp = types.SimpleNamespace(mesh=parallel.make_mesh(), encoder=encoder, objective=FakeObjective(),
                                views=augment.recipe('simclr', 8, blur_prob=0.0), eval_size=8, num_classes=10)
    workdir = str(tmp_path_factory.mktemp('analysis'))
    config = small_config(part=dict(type='part_probe', epochs=3),
                          layers=dict(type='layer_probe', epochs=3),
                          few=dict(type='few_label', fractions=(0.1,), epochs=3, repeats=2))
    ctx = make_context(config, exp, train, test, workdir)
    v = random_variables(encoder, jnp.zeros((2, 8, 8, 3)), 0)
    state = types.SimpleNamespace(params={'encoder': v['params']}, batch_stats={'encoder': v['batch_stats']},
                                  objective_state={}, step=0)
    results = EvalRunner(ctx).run(state, 5, final=True)

    @jax.jit
    def reference(images):  # all images at once, outside the evaluation context
        x = augment.eval_view(images, 8, ctx.mean, ctx.std)
        return {'pooled': encoder.apply(v, x, train=False)['pooled'], **layer_features(encoder, v, x)}
    both = jax.tree.map(np.asarray, reference(jnp.asarray(np.concatenate([ctx.train.images, ctx.test.images]))))
    n = len(ctx.train.labels)
    ref = {'train': {k: a[:n] for k, a in both.items()}, 'test': {k: a[n:] for k, a in both.items()}}
    return types.SimpleNamespace(ctx=ctx, state=state, variables=v, results=results, workdir=workdir, ref=ref)


def test_part_probe_protocol(setup):
    ctx, out = setup.ctx, setup.results
    assert out['part_whole_top1'] == out['linear_top1']  # whole level: the linear evaluator's probe, same settings
    assert 0.1 < out['part_part_top1'] < out['part_whole_top1']  # above chance, below the whole-object probe
    evaluator = PartProbe(_settings(ctx, 'part'), ctx, 'part')
    boxes = evaluator.boxes('test')
    assert boxes.shape == (len(ctx.test.labels), 1, 4)
    np.testing.assert_array_equal(boxes, PartProbe(_settings(ctx, 'part'), ctx, 'part').boxes('test'))  # seeded
    assert not np.allclose(boxes[:300], evaluator.boxes('train'))  # each split its own draws
    # Part features against the encoder on the crops made directly, image by image.
    x_test, y_test = evaluator.part_features(setup.state, 'test')
    x_train, y_train = evaluator.part_features(setup.state, 'train')
    rows = [0, 95, 96, len(ctx.test.labels) - 1]  # across blocks, the last in the padded block
    crops = crop_parts(jnp.asarray(ctx.test.images[rows]), jnp.asarray(boxes[rows]), 8, ctx.mean, ctx.std)
    want = ctx.encoder.apply(setup.variables, crops, train=False)['pooled']
    np.testing.assert_allclose(x_test[rows], want, rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(y_test, ctx.test.labels)
    want = train_linear_probe(x_train, y_train, x_test, y_test, 10, epochs=3, lr=0.1, batch_size=256, seed=ctx.seed)
    assert out['part_part_top1'] == pytest.approx(want['top1'], abs=1e-9)


def _settings(ctx, name):
    from ssljax.evaluation import settings_of
    return settings_of(name, ctx.config.evals[name])


def test_part_probe_parts_per_image(setup):
    ctx = setup.ctx
    settings = _settings(ctx, 'part')
    settings.parts_per_image = 3
    x, y = PartProbe(settings, ctx, 'part').part_features(setup.state, 'test')
    assert x.shape == (3 * len(ctx.test.labels), 16) and np.array_equal(y, np.repeat(ctx.test.labels, 3))
    settings.parts_per_image = 1
    x1, _ = PartProbe(settings, ctx, 'part').part_features(setup.state, 'test')
    np.testing.assert_allclose(x[::3], x1, atol=1e-6)  # the first part of every image is the same box


def test_layer_probe_reports_every_stage(setup):
    ctx, out, ref = setup.ctx, setup.results, setup.ref
    assert {k for k in out if k.startswith('layers_')} == {'layers_layer1_top1', 'layers_layer2_top1'}
    # The last stage is the pooled encoder output: the linear evaluator's number (to float round-off of features).
    assert out['layers_layer2_top1'] == pytest.approx(out['linear_top1'], abs=2 / len(ctx.test.labels))
    want = train_linear_probe(ref['train']['stage1'], ctx.train.labels, ref['test']['stage1'], ctx.test.labels, 10,
                              epochs=3, seed=ctx.seed)
    assert out['layers_layer1_top1'] == pytest.approx(want['top1'], abs=2 / len(ctx.test.labels))
    report = json.load(open(os.path.join(setup.workdir, 'figures', 'layers_layers_0000005.json')))
    assert report['layers'] == ['stage1', 'stage2'] and report['dims'] == [8, 16]
    assert report['top1'] == [out['layers_layer1_top1'], out['layers_layer2_top1']]
    assert os.path.isfile(os.path.join(setup.workdir, 'figures', 'layers_layers_0000005.png'))


def test_few_label_probe_on_balanced_subsets(setup):
    ctx, out = setup.ctx, setup.results
    assert {k for k in out if k.startswith('few_')} == {'few_10pct_top1', 'few_10pct_top1_std', 'few_10pct_examples'}
    assert out['few_10pct_examples'] == 30  # 10% of the 300 train images
    feats_train, feats_test = setup.ref['train']['pooled'], setup.ref['test']['pooled']
    tops = []
    for r in range(2):
        rows = balanced_subset(ctx.train.labels, 0.1, seed=r)
        tops.append(train_linear_probe(feats_train[rows], ctx.train.labels[rows], feats_test, ctx.test.labels, 10,
                                       epochs=3, seed=ctx.seed)['top1'])
    assert out['few_10pct_top1'] == pytest.approx(np.mean(tops), abs=2 / len(ctx.test.labels))
    assert out['few_10pct_top1_std'] == pytest.approx(np.std(tops), abs=2 / len(ctx.test.labels))
    assert out['few_10pct_top1'] < out['linear_top1']  # 30 labels do worse than 300


@pytest.mark.parametrize('settings,key', [
    (dict(type='part_probe', area=(0.0, 0.3)), 'evals.e.area'),
    (dict(type='part_probe', area=(0.3, 0.1)), 'evals.e.area'),
    (dict(type='part_probe', ratio=(2.0, 1.0)), 'evals.e.ratio'),
    (dict(type='part_probe', parts_per_image=0), 'evals.e.parts_per_image'),
    (dict(type='part_probe', epochs=0), 'evals.e.epochs'),
    (dict(type='layer_probe', token_pool='max'), 'evals.e.token_pool'),
    (dict(type='few_label', fractions=(0.1, 1.5)), 'evals.e.fractions'),
    (dict(type='few_label', fractions=()), 'evals.e.fractions'),
    (dict(type='few_label', repeats=0), 'evals.e.repeats'),
    (dict(type='few_label', seed=-1), 'evals.e.seed'),
    (dict(type='few_label', fraction=0.1), 'evals.e.fraction'),
])
def test_settings_are_checked_naming_the_key(settings, key):
    with pytest.raises(ConfigError) as info:
        validate_evals(small_config(e=settings))
    message = str(info.value)
    assert f'"{key}' in message and '\n' not in message, message
