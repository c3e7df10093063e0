"""Issue 20, the model half: ViT-L/H/g presets and shape keys, remat and scan equal to the plain model (outputs and
gradients), the unrolled <-> stacked parameter converter, checkpoints that restore across layouts, the config checks,
and the memory bench's JSON on CPU devices."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from ssljax import checkpoint as ckpt_lib
from ssljax import optim
from ssljax.config_lib import ConfigError
from ssljax.models import registry, resnet, vit

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def close(a, b, tol=1e-6):
    """max |a - b| <= tol * max(1, max |b|): 1e-6 on the tensor's own scale (float32 sums in another order)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    assert a.shape == b.shape
    err, scale = np.abs(a - b).max(initial=0.0), max(1.0, np.abs(b).max(initial=0.0))
    assert err <= tol * scale, f'max abs difference {err:.3g} > {tol:g} x {scale:.3g}'


def _vit_param_count(dim, depth, mlp, patch, channels=3):
    """NumPy count of our ViT without classifier: patch embedding, [CLS], depth blocks, final LayerNorm."""
    block = (3 * dim * dim + 3 * dim) + (dim * dim + dim) + (dim * mlp + mlp) + (mlp * dim + dim) + 4 * dim
    return patch * patch * channels * dim + dim + dim + depth * block + 2 * dim


@pytest.mark.parametrize(
    'name,dim,depth,heads,mlp,patch,published_m',
    [
        ('vit_large', 1024, 24, 16, 4096, 16, 304),  # ViT-L/16: 304 M (Dosovitskiy et al. 2021, Table 1: 307 M)
        ('vit_huge', 1280, 32, 16, 5120, 14, 632),  # ViT-H/14: 632 M
        ('vit_giant', 1408, 40, 16, 6144, 14, 1011),  # ViT-g/14: 1011 M (Zhai et al. 2022, Table 2)
    ],
)
def test_presets_shapes_and_counts(name, dim, depth, heads, mlp, patch, published_m):
    module, feature_dim = registry.create_encoder(name, image_size=224)
    shape = (module.dim, module.depth, module.num_heads, module.patch_size, feature_dim)
    assert shape == (dim, depth, heads, patch, dim)
    shapes = jax.eval_shape(lambda: module.init(jax.random.key(0), jnp.zeros((1, 224, 224, 3)), train=False))
    params = shapes['params']
    assert params['block1']['fc1']['kernel'].shape == (dim, mlp)
    n = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))
    assert n == _vit_param_count(dim, depth, mlp, patch)
    assert abs(n / 1e6 - published_m) / published_m < 0.01


def _config(method='mae', **model):
    from ssljax import configure

    overrides = [f'model.{k}={v}' for k, v in model.items()]
    return configure.load_config_with_overrides(os.path.join(ROOT, f'configs/{method}.py'), overrides)


def test_shape_keys_build_the_encoder():
    config = _config(backbone='vit_test', dim=48, depth=3, num_heads=4, mlp_ratio=2.0)
    module, feature_dim = registry.encoder_from_config(config)
    assert (module.dim, module.depth, module.num_heads, feature_dim) == (48, 3, 4, 48)
    assert registry._settings(registry.BACKBONES['vit_test']) >= {'remat', 'remat_policy', 'scan', 'mlp_dim'}
    shapes = jax.eval_shape(lambda: module.init(jax.random.key(0), jnp.zeros((1, 28, 28, 3)), train=False))
    assert shapes['params']['block3']['fc1']['kernel'].shape == (48, 96)
    # An explicit ratio wins over vit_giant's preset MLP width.
    giant, _ = registry.encoder_from_config(_config(backbone='vit_giant', mlp_ratio=4.0, depth=1, patch_size=14))
    assert giant.mlp_dim == 0 and giant.mlp_ratio == 4.0 and giant.depth == 1
    # Defaults (0, False) leave the preset alone.
    default, _ = registry.encoder_from_config(_config(backbone='vit_small'))
    assert (default.dim, default.num_heads, default.mlp_dim, default.scan, default.remat) == (384, 6, 0, False, 'none')


@pytest.mark.parametrize(
    'model,key',
    [
        (dict(remat_policy='save_only_these_names'), 'model.remat_policy'),  # a factory, not a policy
        (dict(remat_policy='nope'), 'model.remat_policy'),
        (dict(remat='everything'), 'model.remat'),
        (dict(method='simclr', scan='true'), 'model.scan'),
        (dict(method='simclr', dim=64), 'model.dim'),
        (dict(num_heads=-1), 'model.num_heads'),
    ],
)
def test_bad_model_keys_are_config_errors(model, key):
    from ssljax import configure

    config = _config(**model)
    with pytest.raises(ConfigError, match=f'"{key}"'):
        configure.validate(config, 1, check_data=False)


# ----- remat and scan vs the plain model ---------------------------------------------------------------------------
def _vit(**kw):
    return vit.ViT(dim=32, depth=3, num_heads=2, patch_size=4, image_size=16, **kw)


def _images(b=4, size=16, seed=0):
    return jax.random.normal(jax.random.key(seed), (b, size, size, 3))


def _loss_and_grad(module, params, x, **call):
    def loss(p):
        out = module.apply({'params': p}, x, **call)
        return jnp.sum(out['tokens'] ** 2) + jnp.sum(jnp.sin(out['pooled']))

    return jax.jit(jax.value_and_grad(loss))(params)


@pytest.mark.parametrize('policy', ['nothing_saveable', 'dots_saveable'])
def test_vit_remat_equals_plain_with_drop_path(policy):
    x = _images()
    plain = _vit(drop_path_rate=0.3)
    params = plain.init(jax.random.key(1), x, train=False)['params']
    remat = _vit(drop_path_rate=0.3, remat='block', remat_policy=policy)
    assert jax.tree.structure(remat.init(jax.random.key(1), x, train=False)['params']) == jax.tree.structure(params)
    rngs = {'dropout': jax.random.key(7)}

    def loss_grad(module):
        def loss(p):
            out = module.apply({'params': p}, x, train=True, rngs=rngs)
            return jnp.sum(out['tokens'] ** 2)

        return jax.jit(jax.value_and_grad(loss))(params)

    (l0, g0), (l1, g1) = loss_grad(plain), loss_grad(remat)
    close(l1, l0)
    jax.tree.map(lambda a, b: close(a, b), g1, g0)
    # The drop path really acted (the same loss without it differs).
    l_eval, _ = _loss_and_grad(plain, params, x, train=False)
    assert abs(float(l_eval) - float(l0)) > 1e-3


@pytest.mark.parametrize('remat,masked', [('none', False), ('block', True)])
def test_vit_scan_equals_unrolled(remat, masked):
    x = _images()
    plain = _vit()
    params = plain.init(jax.random.key(1), x, train=False)['params']
    scanned = _vit(scan=True, remat=remat)
    init_scanned = scanned.init(jax.random.key(1), x, train=False)['params']
    stacked = vit.stack_blocks(params)
    assert jax.tree.map(lambda a: a.shape, init_scanned) == jax.tree.map(lambda a: a.shape, stacked)
    call = dict(train=True)
    if masked:  # MAE's drop mode: 12 of 16 patches masked, the same in both
        mask = jnp.asarray(np.random.default_rng(0).permuted(np.repeat([[True] * 12 + [False] * 4], 4, 0), axis=1))
        call.update(mask=mask, num_visible=4)
    l0, g0 = _loss_and_grad(plain, params, x, **call)
    l1, g1 = _loss_and_grad(scanned, stacked, x, **call)
    close(l1, l0)
    jax.tree.map(lambda a, b: close(a, b), vit.unstack_blocks(g1), g0)
    jax.tree.map(lambda a, b: close(a, b), g1, vit.stack_blocks(g0))


@pytest.mark.parametrize('remat', ['none', 'block'])
def test_mae_decoder_scan_equals_unrolled(remat):
    """MAE's decoder takes the encoder's layout: scanned (``decoder/blocks``, stacked) equals the unrolled blocks'
    outputs and gradients, with and without remat."""
    from ssljax.models.mae_decoder import MAEDecoder

    kw = dict(dim=16, depth=3, num_heads=2, patch_size=4, grid_h=4, grid_w=4)
    rng = np.random.default_rng(0)
    cls, visible = jnp.asarray(rng.normal(size=(2, 8))), jnp.asarray(rng.normal(size=(2, 4, 8)))
    idx = jnp.asarray(np.stack([rng.permutation(16)[:4] for _ in range(2)]), jnp.int32)
    plain, scanned = MAEDecoder(**kw), MAEDecoder(**kw, scan=True, remat=remat)
    params = plain.init(jax.random.key(1), cls, visible, idx)['params']
    assert {'block1', 'block2', 'block3'} <= set(params) and 'blocks' not in params
    stacked = vit.stack_blocks(params)
    init_scanned = scanned.init(jax.random.key(1), cls, visible, idx)['params']
    assert jax.tree.map(lambda a: a.shape, init_scanned) == jax.tree.map(lambda a: a.shape, stacked)

    def loss_grad(module, p):
        loss = lambda q: jnp.sum(jnp.sin(module.apply({'params': q}, cls, visible, idx)))  # noqa: E731
        return jax.jit(jax.value_and_grad(loss))(p)

    (l0, g0), (l1, g1) = loss_grad(plain, params), loss_grad(scanned, stacked)
    close(l1, l0)
    jax.tree.map(lambda a, b: close(a, b), g1, vit.stack_blocks(g0))
    # the optimizer's per-tensor rules see each stacked decoder layer as its own tensor
    mask = optim.decay_mask({'decoder': stacked})['decoder']
    blocks = mask['blocks']
    assert blocks['fc1']['kernel'] and not blocks['fc1']['bias'] and not blocks['norm1']['scale']


def test_mae_objective_decoder_follows_model_scan():
    from ssljax import parallel, train

    for scan in (False, True):
        config = _config(backbone='vit_test', depth=2, scan=scan)
        exp = train.build_experiment(config, parallel.make_mesh(jax.devices()[:1]), 1000, 10)
        params = jax.eval_shape(lambda exp=exp: train.init_state(exp)).params
        assert ('blocks' in params['decoder']) == ('blocks' in params['encoder']) == scan
        assert ('block1' in params['decoder']) == (not scan)


def test_scan_drop_path_rates_per_layer():
    """Scanned stochastic depth: layer i drops with the loop's rate r_i (the traced-rate path equals the static one),
    the draws follow the dropout key, and train=False is the plain model."""
    assert vit.drop_path_rates(0.3, 4) == pytest.approx([0.0, 0.1, 0.2, 0.3])
    y = jax.random.normal(jax.random.key(0), (64, 5, 8))
    key = jax.random.key(3)
    np.testing.assert_array_equal(vit.drop_path(y, 0.25, key), jax.jit(vit.drop_path)(y, jnp.float32(0.25), key))
    np.testing.assert_array_equal(jax.jit(vit.drop_path)(y, jnp.float32(0.0), key), y)

    x = _images(b=64)
    scanned = _vit(scan=True, drop_path_rate=0.5)
    params = scanned.init(jax.random.key(1), x, train=False)['params']
    plain_params = vit.unstack_blocks(params)
    eval_out = scanned.apply({'params': params}, x, train=False)['pooled']
    close(eval_out, _vit().apply({'params': plain_params}, x, train=False)['pooled'])
    a = scanned.apply({'params': params}, x, train=True, rngs={'dropout': jax.random.key(5)})['pooled']
    b = scanned.apply({'params': params}, x, train=True, rngs={'dropout': jax.random.key(5)})['pooled']
    c = scanned.apply({'params': params}, x, train=True, rngs={'dropout': jax.random.key(6)})['pooled']
    np.testing.assert_array_equal(a, b)
    assert np.abs(np.asarray(a) - np.asarray(eval_out)).max() > 1e-3
    assert np.abs(np.asarray(a) - np.asarray(c)).max() > 1e-3


def test_resnet_remat_equals_plain():
    x = _images(b=4, size=16)
    plain = resnet.ResNetTiny(cifar_stem=True)
    variables = plain.init(jax.random.key(0), x, train=False)
    remat = resnet.ResNetTiny(cifar_stem=True, remat='block')

    def loss_grad(module):
        def loss(p):
            out, state = module.apply(
                {'params': p, 'batch_stats': variables['batch_stats']}, x, train=True, mutable=['batch_stats']
            )
            return jnp.sum(out['pooled'] ** 2), state

        return jax.jit(jax.value_and_grad(loss, has_aux=True))(variables['params'])

    ((l0, s0), g0), ((l1, s1), g1) = loss_grad(plain), loss_grad(remat)
    close(l1, l0)
    jax.tree.map(lambda a, b: close(a, b), g1, g0)
    jax.tree.map(lambda a, b: close(a, b), s1, s0)


@pytest.mark.parametrize(
    'opt',
    [dict(name='lars', lars_clip=True), dict(name='lars', lars_variant='tf'), dict(name='adamw'), dict(name='sgd')],
)
def test_optimizer_step_is_the_same_on_stacked_blocks(opt):
    """Weight-decay masks, LARS trust ratios and DINO's per-tensor clipping act per layer on the stacked blocks."""
    config = _config(method='simclr')
    with config.unlocked():
        for k, v in opt.items():
            config.optimizer[k] = v
        config.optimizer.clip_grad, config.optimizer.clip_grad_mode = 0.5, 'per_tensor'
        config.optimizer.weight_decay = 0.1
        config.optimizer.warmup_steps = 0
    x = _images()
    params = {'encoder': _vit().init(jax.random.key(1), x, train=False)['params'], 'projector': {'w': jnp.ones((3, 2))}}
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(2), 2 * len(leaves))
    params = treedef.unflatten([p + 0.1 * jax.random.normal(k, p.shape) for p, k in zip(leaves, keys)])
    grads = treedef.unflatten([jax.random.normal(k, p.shape) for p, k in zip(leaves, keys[len(leaves) :])])
    tx, _ = optim.create_optimizer(config, 100, 10, ())
    stack = lambda t: {**t, 'encoder': vit.stack_blocks(t['encoder'])}  # noqa: E731

    def two_steps(p, g):
        state = tx.init(p)
        for _ in range(2):
            u, state = tx.update(g, state, p)
            p = optax.apply_updates(p, u)
        return p

    plain = jax.jit(two_steps)(params, grads)
    scanned = jax.jit(two_steps)(stack(params), stack(grads))
    jax.tree.map(lambda a, b: close(a, b), scanned, stack(plain))
    masks = optim.decay_mask(stack(params))
    assert not masks['encoder']['blocks']['fc1']['bias'] and masks['encoder']['blocks']['fc1']['kernel']


def test_finetune_layer_decay_on_stacked_blocks():
    from ssljax.evaluation import finetune

    params = {'encoder': _vit().init(jax.random.key(1), _images(), train=False)['params'], 'head': {'w': jnp.ones(2)}}
    stacked = {**params, 'encoder': vit.stack_blocks(params['encoder'])}
    assert finetune.count_layers(stacked['encoder']) == finetune.count_layers(params['encoder']) == 4
    plain = finetune.layer_scales(params, 0.5)
    scales = finetune.layer_scales(stacked, 0.5)
    for name in ('kernel', 'bias'):
        got = scales['encoder']['blocks']['fc1'][name]
        assert got.ndim == stacked['encoder']['blocks']['fc1'][name].ndim
        want = [plain['encoder'][f'block{i}']['fc1'][name] for i in (1, 2, 3)]
        np.testing.assert_allclose(np.ravel(got), want)
    assert scales['encoder']['norm']['scale'] == plain['encoder']['norm']['scale']
    assert finetune.decay_mask(stacked)['encoder']['blocks']['fc1']['bias'] is False


# ----- layouts ------------------------------------------------------------------------------------------------------
def _state_tree(scan: bool):
    """A train-state-like tree: params, AdamW moments (with a weight-decay mask), an EMA copy, a head."""
    x = _images()
    params = {'encoder': _vit(scan=scan).init(jax.random.key(1), x, train=False)['params'], 'head': {'w': jnp.ones(3)}}
    mask = optim.decay_mask(params)  # per layer for the stacked blocks
    decay, trace = optax.masked(optax.add_decayed_weights(0.05), mask), optax.masked(optax.trace(0.9), mask)
    tx = optax.chain(optax.scale_by_adam(), decay, trace)
    teacher = {'teacher': {'encoder': params['encoder']}}
    return {'params': params, 'opt_state': tx.init(params), 'objective_state': teacher}


def _mae_state_tree(scan: bool):
    """An MAE-like train state: a 3-block encoder and a 2-block decoder (another depth), AdamW moments."""
    from ssljax.models.mae_decoder import MAEDecoder

    x = _images()
    decoder = MAEDecoder(dim=16, depth=2, num_heads=2, patch_size=4, grid_h=4, grid_w=4, scan=scan)
    dec = decoder.init(jax.random.key(2), jnp.zeros((1, 32)), jnp.zeros((1, 4, 32)), jnp.zeros((1, 4), jnp.int32))
    params = {'encoder': _vit(scan=scan).init(jax.random.key(1), x, train=False)['params'], 'decoder': dec['params']}
    return {'params': params, 'opt_state': optax.adamw(1e-3).init(params)}


def test_relayout_converts_mae_decoder_blocks_with_their_own_depth():
    unrolled = _mae_state_tree(scan=False)
    stacked = vit.relayout(unrolled, scanned=True)
    fresh = _mae_state_tree(scan=True)
    assert jax.tree.map(lambda a: a.shape, fresh) == jax.tree.map(lambda a: a.shape, stacked)
    assert stacked['params']['decoder']['blocks']['fc1']['kernel'].shape[0] == 2
    back = vit.relayout(stacked, scanned=False)
    assert jax.tree.structure(back) == jax.tree.structure(unrolled)
    jax.tree.map(np.testing.assert_array_equal, back, unrolled)


def test_relayout_round_trip_on_a_train_state():
    unrolled = _state_tree(scan=False)
    stacked = vit.relayout(unrolled, scanned=True)
    assert vit.is_scanned(stacked) is True and vit.is_scanned(unrolled) is False
    assert vit.is_scanned({'head': {'block1': 1}}) is None  # only 'encoder' subtrees are ViT encoders
    assert 'blocks' in stacked['objective_state']['teacher']['encoder']
    assert 'blocks' in stacked['opt_state'][0].mu['encoder']
    assert stacked['params']['head'] == unrolled['params']['head']
    back = vit.relayout(stacked, scanned=False)
    assert jax.tree.structure(back) == jax.tree.structure(unrolled)
    jax.tree.map(np.testing.assert_array_equal, back, unrolled)
    # Same shapes as a scanned model's own init.
    fresh = _state_tree(scan=True)
    assert jax.tree.map(lambda a: a.shape, fresh) == jax.tree.map(lambda a: a.shape, stacked)


@pytest.mark.parametrize('saved', ['unrolled', 'scanned', 'legacy'])
def test_mae_checkpoint_restores_into_either_layout(tmp_path, saved):
    """An MAE state saved unrolled, scanned, or as versions whose decoder stayed unrolled under model.scan wrote it
    (encoder stacked, decoder unrolled) restores into both layouts, equal leaf by leaf."""
    unrolled = jax.tree.map(lambda a: a + jnp.asarray(1, a.dtype), _mae_state_tree(scan=False))  # not the init
    tree = {'unrolled': unrolled, 'scanned': vit.relayout(unrolled, scanned=True),
            'legacy': vit.relayout(unrolled, scanned=True, keys=('encoder',))}[saved]
    if saved == 'legacy':
        assert 'blocks' in tree['params']['encoder'] and 'block1' in tree['params']['decoder']
    ckpt = ckpt_lib.Checkpointer(str(tmp_path), 2, async_save=False)
    ckpt.save(1, tree)
    ckpt.wait()
    for target_scan in (False, True):
        restored = ckpt.restore(_mae_state_tree(scan=target_scan), 1)
        want = vit.relayout(unrolled, scanned=target_scan)
        assert jax.tree.structure(restored) == jax.tree.structure(want)
        jax.tree.map(np.testing.assert_array_equal, restored, want)
    ckpt.close()


@pytest.mark.parametrize('saved_scan', [False, True])
def test_checkpoint_restores_across_layouts(tmp_path, saved_scan):
    saved = jax.tree.map(lambda a: a + jnp.asarray(1, a.dtype), _state_tree(scan=saved_scan))  # not the init
    ckpt = ckpt_lib.Checkpointer(str(tmp_path), 2, async_save=False)
    ckpt.save(3, saved)
    ckpt.wait()
    for target_scan in (saved_scan, not saved_scan):
        target = _state_tree(scan=target_scan)
        step, restored = ckpt.restore_latest(target)
        assert step == 3
        assert jax.tree.structure(restored) == jax.tree.structure(target)
        jax.tree.map(np.testing.assert_array_equal, restored, vit.relayout(saved, scanned=target_scan))
        np.testing.assert_array_equal(
            ckpt.restore(target)['objective_state']['teacher']['encoder']['norm']['scale'],
            saved['objective_state']['teacher']['encoder']['norm']['scale'],
        )
    ckpt.close()


def test_checkpoint_of_another_model_still_fails(tmp_path):
    ckpt = ckpt_lib.Checkpointer(str(tmp_path), 2, async_save=False)
    ckpt.save(1, _state_tree(scan=False))
    ckpt.wait()
    other = {'params': {'encoder': vit.ViT(dim=16, depth=2, num_heads=2, patch_size=4, image_size=16).init(
        jax.random.key(0), _images(), train=False)['params']}}
    with pytest.raises(ckpt_lib.CheckpointError):
        ckpt.restore_latest(other, log=lambda m: None)
    ckpt.close()


# ----- the memory bench -----------------------------------------------------------------------------------------------
def test_topology_names():
    from ssljax import bench

    assert bench.topology_spec('v5e-256') == dict(topology_name='v5e:16x16', chip_config_name='default', chips=256)
    assert bench.topology_spec('v5e-8')['topology_name'] == 'v5e:2x4'
    assert bench.topology_spec('v4-1024') == dict(topology_name='v4:8x8x8', chip_config_name='megacore', chips=512)
    assert bench.topology_spec('v4-2048')['topology_name'] == 'v4:8x8x16'
    assert bench.topology_spec('v4-8')['topology_name'] == 'v4:2x2x1'
    assert bench.topology_spec('v5p-128')['topology_name'] == 'v5:4x4x4'
    assert bench.topology_spec('v5e:4x4')['topology_name'] == 'v5e:4x4'
    for bad in ('v5e-100', 'tpu-8', 'v4-2'):
        with pytest.raises(ValueError):
            bench.topology_spec(bad)


def _memory(*overrides, devices=2):
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get('PYTHONPATH', ''))
    cmd = [sys.executable, '-m', 'ssljax.bench', '--memory', '--cpu-devices', str(devices), '--config',
           'configs/mae.py', '--config.batch_size=8', '--config.model.depth=2', *overrides]
    out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_memory_bench_json_on_cpu_devices():
    """One JSON line from the compiled real step: the byte figures add up, the state figure is the replicated
    state's size (params + AdamW moments + probe ...), the mesh is the 2 simulated devices'."""
    from ssljax import configure, parallel, train

    result = _memory()
    for key in ('state_bytes_per_device', 'temp_bytes_per_device', 'total_bytes_per_device', 'flops', 'compile_s'):
        assert result[key] > 0, key
    assert result['mesh'] == {'data': 2, 'fsdp': 1} and result['devices'] == 2 and result['batch_per_device'] == 4
    parts = ('argument', 'output', 'temp', 'code')
    a, o, t, c = (result[f'{p}_bytes_per_device'] for p in parts)
    assert result['total_bytes_per_device'] == a + o + t + c - result['alias_bytes_per_device']
    # The replicated state on one device = every leaf of the train state, computed here from its shapes.
    overrides = ['batch_size=8', 'model.depth=2']
    config = configure.load_config_with_overrides(os.path.join(ROOT, 'configs/mae.py'), overrides)
    exp = train.build_experiment(config, parallel.make_mesh(jax.devices()[:1]), 1_281_167, 10)
    shapes = jax.eval_shape(lambda: train.init_state(exp))
    assert result['state_bytes_per_device'] == sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(shapes))
    assert result['argument_bytes_per_device'] >= result['state_bytes_per_device']


@pytest.mark.slow
def test_memory_bench_remat_and_scan_compile_with_the_same_state():
    """remat and scan change the step, not the state. (XLA:CPU's memory plan does not show remat's saving: at this
    size its temporaries grow; libtpu's does, BENCHMARKS.md "Memory at scale".)"""
    plain = _memory('--config.model.depth=4')
    remat = _memory('--config.model.depth=4', '--config.model.remat=block')
    scan = _memory('--config.model.depth=4', '--config.model.scan=true')
    assert plain['state_bytes_per_device'] == remat['state_bytes_per_device'] == scan['state_bytes_per_device']
    assert (remat['remat'], scan['scan'], plain['scan']) == ('block', True, False)
