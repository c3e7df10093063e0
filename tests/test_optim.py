"""Optimizer construction: LARS (solo-learn and TF) against NumPy, clipping, weight-decay schedule, freezing, groups."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import common
from ssljax import optim


def make_config(**opt):
    c = common.base_config('simclr', 'mnist')
    c.batch_size = 512
    for k, v in opt.items():
        c.optimizer[k] = v
    return c


def plain_config(**opt):
    """No warm-up, no lr scaling, constant lr (final_lr = lr), no weight decay unless given."""
    base = dict(lr=0.5, lr_scaling='none', warmup_steps=0, final_lr=opt.get('lr', 0.5), weight_decay=0.0,
                momentum=0.0)
    return make_config(**{**base, **opt})


def tree_np(tree):
    return jax.tree.map(lambda x: np.asarray(x, np.float64), tree)


# ----- NumPy references ----------------------------------------------------------------------------------------------

def np_lars_solo(params, grads, bufs, lr, wd, eta, mom, clip, adapt, eps=1e-8):
    """solo-learn's LARS.step for one group: -> (updates, new momentum buffers)."""
    updates, new_bufs = {}, {}
    for k, w in params.items():
        g = grads[k]
        d = g
        w_norm, g_norm = np.linalg.norm(w), np.linalg.norm(g)
        if adapt[k] and w_norm != 0 and g_norm != 0:
            r = eta * w_norm / (g_norm + w_norm * wd + eps)
            if clip:
                r = min(r / lr, 1.0)
            d = (g + wd * w) * r
        new_bufs[k] = d if bufs is None else mom * bufs[k] + d
        updates[k] = -lr * new_bufs[k]
    return updates, new_bufs


def np_lars_tf(params, grads, vels, lr, wd, eta, mom, clip, adapt):
    """The SimCLR TF reference: g' = g + wd w; v <- mu v + lr r g'; w <- w - v."""
    updates, new_vels = {}, {}
    for k, w in params.items():
        g, r = grads[k], 1.0
        if adapt[k]:
            g = g + wd * w
            w_norm, g_norm = np.linalg.norm(w), np.linalg.norm(g)
            r = eta * w_norm / g_norm if w_norm > 0 and g_norm > 0 else 1.0
            if clip:
                r = min(r, 1.0)
        new_vels[k] = (0.0 if vels is None else mom * vels[k]) + lr * r * g
        updates[k] = -new_vels[k]
    return updates, new_vels


def np_cosine_wd(start, end, total, t):
    """DINO's cosine_scheduler(start, end, epochs, niter_per_ep)[t] with epochs * niter_per_ep = total."""
    return end + 0.5 * (start - end) * (1 + np.cos(np.pi * min(t, total) / total))


def lars_problem(seed=0):
    """A weight (adapted), a bias (excluded), a zero weight and a weight with a zero gradient."""
    rng = np.random.default_rng(seed)
    params = {'w': rng.normal(size=(3, 4)), 'b': rng.normal(size=(4,)), 'zero_w': np.zeros((2, 3)),
              'zero_g': rng.normal(size=(2, 2))}
    grads = [{'w': rng.normal(size=(3, 4)) * 10, 'b': rng.normal(size=(4,)), 'zero_w': rng.normal(size=(2, 3)),
              'zero_g': np.zeros((2, 2))} for _ in range(2)]
    cast = lambda t: {k: v.astype(np.float32).astype(np.float64) for k, v in t.items()}  # noqa: E731
    return cast(params), [cast(g) for g in grads]


def jnp_tree(tree):
    return {k: jnp.asarray(v, jnp.float32) for k, v in tree.items()}


def assert_tree_close(actual, desired, rtol=2e-5, atol=1e-7):
    for k in desired:
        np.testing.assert_allclose(np.asarray(actual[k]), desired[k], rtol=rtol, atol=atol, err_msg=k)


# ----- schedule -------------------------------------------------------------------------------------------------------

def test_schedule_warmup_then_cosine():
    c = make_config(lr=0.3, warmup_steps=10, warmup_init_lr=0.0)
    _, schedule = optim.create_optimizer(c, total_steps=110, steps_per_epoch=10)
    peak = 0.3 * 512 / 256
    np.testing.assert_allclose(schedule(0), 0.0, atol=1e-8)
    np.testing.assert_allclose(schedule(10), peak, rtol=1e-6)
    np.testing.assert_allclose(schedule(60), peak * 0.5, rtol=1e-5)  # half-way through the cosine
    np.testing.assert_allclose(schedule(110), 0.0, atol=1e-7)


def test_solo_learn_warmup_peaks_one_step_earlier():
    """warmup_schedule 'solo_learn': init + (peak - init) t / (W - 1) for t < W; the cosine after W is the same."""
    ours = optim.warmup_cosine(1.0, 50, 10, init_lr=0.1, warmup='optax')
    solo = optim.warmup_cosine(1.0, 50, 10, init_lr=0.1, warmup='solo_learn')
    t = np.arange(10)
    np.testing.assert_allclose(np.asarray(jax.vmap(solo)(t)), 0.1 + 0.9 * t / 9, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(jax.vmap(ours)(t)), 0.1 + 0.9 * t / 10, rtol=1e-6)
    after = np.arange(10, 51)
    np.testing.assert_allclose(np.asarray(jax.vmap(solo)(after)), np.asarray(jax.vmap(ours)(after)), rtol=1e-6)
    one = optim.warmup_cosine(1.0, 50, 1, init_lr=0.1, warmup='solo_learn')  # W = 1: the start, then the peak
    np.testing.assert_allclose([float(one(0)), float(one(1))], [0.1, 1.0], rtol=1e-6)


# ----- LARS -----------------------------------------------------------------------------------------------------------

ETA, WD, LR0 = 0.02, 1e-2, {'r<lr': 0.5, 'r>lr': 1e-4}


@pytest.mark.parametrize('momentum', [0.0, 0.9])
@pytest.mark.parametrize('regime', ['r<lr', 'r>lr'])
@pytest.mark.parametrize('clip', [False, True])
def test_lars_solo_learn_matches_reference(clip, regime, momentum):
    params, grads = lars_problem()
    lr0 = LR0[regime]
    schedule = lambda t: lr0 * (1.0 + 0.5 * t)  # noqa: E731 -- a changing lr tells where the lr sits
    w, g = params['w'], grads[0]['w']
    r = ETA * np.linalg.norm(w) / (np.linalg.norm(g) + WD * np.linalg.norm(w) + 1e-8)
    assert (r < lr0) == (regime == 'r<lr')
    tx = optim.lars(schedule, WD, momentum, ETA, optim.decay_mask, clip=clip)
    adapt = {k: v.ndim > 1 for k, v in params.items()}
    state = tx.init(jnp_tree(params))

    updates, state = tx.update(jnp_tree(grads[0]), state, jnp_tree(params))
    ref, bufs = np_lars_solo(params, grads[0], None, lr0, WD, ETA, momentum, clip, adapt)
    assert_tree_close(updates, ref)
    # the closed forms of the first step
    step = min(r, lr0) if clip else lr0 * r
    np.testing.assert_allclose(updates['w'], -step * (g + WD * w), rtol=2e-5)
    np.testing.assert_allclose(updates['b'], -lr0 * grads[0]['b'], rtol=1e-6)            # excluded: no decay
    np.testing.assert_allclose(updates['zero_w'], -lr0 * grads[0]['zero_w'], rtol=1e-6)  # ||w|| = 0: d = g
    np.testing.assert_array_equal(updates['zero_g'], 0.0)                               # ||g|| = 0: d = g = 0

    params2 = {k: v + np.asarray(updates[k], np.float64) for k, v in params.items()}
    updates2, _ = tx.update(jnp_tree(grads[1]), state, jnp_tree(params2))
    ref2, _ = np_lars_solo(params2, grads[1], bufs, schedule(1), WD, ETA, momentum, clip, adapt)
    assert_tree_close(updates2, ref2)


@pytest.mark.parametrize('clip', [False, True])
def test_lars_tf_variant_matches_reference(clip):
    params, grads = lars_problem(1)
    schedule = lambda t: 0.5 * (1.0 + 0.5 * t)  # noqa: E731
    tx = optim.lars(schedule, WD, 0.9, ETA, optim.decay_mask, clip=clip, variant='tf')
    adapt = {k: v.ndim > 1 for k, v in params.items()}
    state = tx.init(jnp_tree(params))
    updates, state = tx.update(jnp_tree(grads[0]), state, jnp_tree(params))
    ref, vels = np_lars_tf(params, grads[0], None, 0.5, WD, ETA, 0.9, clip, adapt)
    assert_tree_close(updates, ref)
    params2 = {k: v + np.asarray(updates[k], np.float64) for k, v in params.items()}
    updates2, _ = tx.update(jnp_tree(grads[1]), state, jnp_tree(params2))
    ref2, _ = np_lars_tf(params2, grads[1], vels, schedule(1), WD, ETA, 0.9, clip, adapt)
    assert_tree_close(updates2, ref2)


@pytest.mark.parametrize('variant', ['solo_learn', 'tf'])
@pytest.mark.parametrize('exclude', [True, False])
def test_lars_from_config(variant, exclude):
    params, grads = lars_problem(2)
    c = plain_config(name='lars', lr=0.3, weight_decay=WD, momentum=0.9, lars_eta=ETA, lars_clip=True,
                     exclude_bias_and_norm=exclude, lars_variant=variant)
    tx, _ = optim.create_optimizer(c, total_steps=100, steps_per_epoch=10)
    tree = lambda t: {'encoder': jnp_tree(t)}  # noqa: E731
    state = tx.init(tree(params))
    updates, _ = tx.update(tree(grads[0]), state, tree(params))
    adapt = {k: (v.ndim > 1) or not exclude for k, v in params.items()}
    reference = np_lars_solo if variant == 'solo_learn' else np_lars_tf
    ref, _ = reference(params, grads[0], None, 0.3, WD, ETA, 0.9, True, adapt)
    assert_tree_close(updates['encoder'], ref)


def test_default_lars_variant_is_solo_learn():
    assert make_config().optimizer.lars_variant == 'solo_learn'


# ----- gradient clipping ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize('mode', ['per_tensor', 'global'])
def test_clip_grad(mode):
    c = plain_config(name='sgd', lr=1.0, clip_grad=1.0, clip_grad_mode=mode)
    rng = np.random.default_rng(3)
    grads = {'encoder': {'big': rng.normal(size=(3, 3)) * 5, 'small': rng.normal(size=(4,)) * 0.01},
             'fixed': {'w': rng.normal(size=(3, 3)) * 100}}
    params = jax.tree.map(lambda g: jnp.ones(g.shape), grads)
    tx, _ = optim.create_optimizer(c, total_steps=10, steps_per_epoch=1, frozen_heads=('fixed',))
    updates, _ = tx.update(jax.tree.map(jnp.float32, grads), tx.init(params), params)
    enc = grads['encoder']
    if mode == 'per_tensor':  # DINO's clip_gradients: coef = c / (||g|| + 1e-6), applied when < 1
        expected = {k: g * min(1.0, 1.0 / (np.linalg.norm(g) + 1e-6)) for k, g in enc.items()}
        assert np.linalg.norm(enc['big']) > 1 > np.linalg.norm(enc['small'])
    else:  # one factor for all trainable tensors; the frozen head's gradient is not in the norm
        total = np.sqrt(sum(np.sum(g ** 2) for g in enc.values()))
        expected = {k: g / total for k, g in enc.items()}
    assert_tree_close(jax.tree.map(jnp.negative, updates['encoder']), expected, rtol=1e-5)
    np.testing.assert_array_equal(updates['fixed']['w'], 0.0)


# ----- weight-decay schedule ------------------------------------------------------------------------------------------

def test_weight_decay_schedule_is_dinos_cosine():
    c = make_config(weight_decay=0.04, weight_decay_end=0.4)
    wd = optim.weight_decay_schedule(c, total_steps=10)
    for t in (0, 1, 5, 9, 10, 15):
        np.testing.assert_allclose(wd(t), np_cosine_wd(0.04, 0.4, 10, t), rtol=1e-6)
    assert optim.weight_decay_schedule(make_config(weight_decay=0.04), 10) == 0.04  # weight_decay_end < 0: constant


@pytest.mark.parametrize('name', ['sgd', 'adamw', 'lars'])
def test_weight_decay_schedule_in_every_optimizer(name):
    total, lr, start, end = 8, 0.1, 0.04, 0.4
    c = plain_config(name=name, lr=lr, weight_decay=start, weight_decay_end=end, lars_eta=ETA, lars_clip=True)
    tx, _ = optim.create_optimizer(c, total_steps=total, steps_per_epoch=1)
    params, grads = lars_problem(4)
    params = {'encoder': jnp_tree(params)}
    zero = jax.tree.map(jnp.zeros_like, params)
    state = tx.init(params)
    for t in range(total + 1):
        wd_t = np_cosine_wd(start, end, total, t)
        if name == 'lars':  # zero gradients take no decay in LARS: compare a real step instead
            updates, state = tx.update({'encoder': jnp_tree(grads[0])}, state, params)
            adapt = {k: v.ndim > 1 for k, v in params['encoder'].items()}
            ref, _ = np_lars_solo(tree_np(params['encoder']), grads[0], None, lr, wd_t, ETA, 0.0, True, adapt)
            assert_tree_close(updates['encoder'], ref)
        else:  # zero gradients, no momentum: the update is -lr wd_t w on decayed tensors, 0 on the others
            updates, state = tx.update(zero, state, params)
            for k, w in params['encoder'].items():
                expected = -lr * wd_t * np.asarray(w) if w.ndim > 1 else np.zeros(w.shape)
                np.testing.assert_allclose(updates['encoder'][k], expected, rtol=2e-5, atol=1e-9, err_msg=f'{t} {k}')


@pytest.mark.parametrize('eps', [1e-8, 1e-6, 1e-3])
def test_adamw_eps_is_the_config_key(eps):
    """First AdamW step (bias-corrected m_hat = g, v_hat = g^2): update = -lr g / (|g| + eps), no weight decay."""
    lr = 0.1
    c = plain_config(name='adamw', lr=lr, eps=eps)
    tx, _ = optim.create_optimizer(c, total_steps=4, steps_per_epoch=1)
    g = np.array([1e-9, -1e-7, 1e-5, -1e-3], np.float32)
    params = {'encoder': {'kernel': jnp.ones((4,))}}
    updates, _ = tx.update({'encoder': {'kernel': jnp.asarray(g)}}, tx.init(params), params)
    expected = -lr * g.astype(np.float64) / (np.abs(g) + eps)
    np.testing.assert_allclose(updates['encoder']['kernel'], expected, rtol=1e-5)


# ----- freezing a subtree for its first steps -------------------------------------------------------------------------

def freeze_problem():
    rng = np.random.default_rng(5)
    shapes = {'encoder': {'w': (3, 3), 'b': (3,)}, 'head': {'last_layer': {'kernel': (3, 4), 'g': (4,)},
                                                          'mlp': {'kernel': (3, 3)}}}
    is_shape = lambda x: isinstance(x, tuple)  # noqa: E731
    params = jax.tree.map(lambda s: jnp.asarray(rng.normal(size=s), jnp.float32), shapes, is_leaf=is_shape)
    grads = [jax.tree.map(lambda s: jnp.asarray(rng.normal(size=s), jnp.float32), shapes, is_leaf=is_shape)
             for _ in range(6)]
    return params, grads


@pytest.mark.parametrize('name', ['sgd', 'adamw', 'lars'])
def test_freeze_steps(name):
    n, total, warmup, peak, start, end = 3, 20, 10, 0.5, 0.04, 0.2
    c = make_config(name=name, lr=peak, lr_scaling='none', warmup_steps=warmup, warmup_init_lr=0.0, momentum=0.9,
                    weight_decay=start, weight_decay_end=end, lars_eta=ETA, lars_clip=True)
    tx, schedule = optim.create_optimizer(c, total, 1, freeze_steps={'head/last_layer': n})
    params, grads = freeze_problem()
    optim.check_param_groups(c, params, freeze_steps={'head/last_layer': n})
    state = tx.init(params)
    start_params = params
    for t in range(n + 2):
        updates, state = tx.update(grads[t], state, params)
        last = updates['head']['last_layer']
        if t < n:
            for leaf in jax.tree.leaves(last):
                np.testing.assert_array_equal(leaf, 0.0)
        if t == n:  # first real step: fresh momentum / moments / Adam count, schedules at the global step
            lr_t, wd_t = float(schedule(t)), np_cosine_wd(start, end, total, t)
            w, g = tree_np(params['head']['last_layer']), tree_np(grads[t]['head']['last_layer'])
            decayed = {k: v.ndim > 1 for k, v in w.items()}
            if name == 'sgd':
                ref = {k: -lr_t * (g[k] + (wd_t * w[k] if decayed[k] else 0)) for k in w}
            elif name == 'adamw':
                ref = {k: -lr_t * (g[k] / (np.abs(g[k]) + 1e-8) + (wd_t * w[k] if decayed[k] else 0)) for k in w}
            else:
                ref, _ = np_lars_solo(w, g, None, lr_t, wd_t, ETA, 0.9, True, decayed)
            assert_tree_close(last, ref, rtol=1e-4)
        for leaf in jax.tree.leaves({'encoder': updates['encoder'], 'mlp': updates['head']['mlp']}):
            assert float(jnp.abs(leaf).max()) > 0 or t == 0  # lr_0 = 0 under warm-up from 0
        params = optax.apply_updates(params, updates)
        if t < n:
            for a, b in zip(jax.tree.leaves(params['head']['last_layer']),
                            jax.tree.leaves(start_params['head']['last_layer'])):
                np.testing.assert_array_equal(a, b)
    assert not np.allclose(params['head']['last_layer']['kernel'], start_params['head']['last_layer']['kernel'])
    assert not np.allclose(params['encoder']['w'], start_params['encoder']['w'])


def test_freeze_steps_longest_prefix_wins_and_others_move_from_step_0():
    c = plain_config(name='sgd', lr=0.1)
    tx, _ = optim.create_optimizer(c, 10, 1, freeze_steps={'head': 1, 'head/last_layer': 2})
    params, grads = freeze_problem()
    state = tx.init(params)
    moved = []
    for t in range(3):
        updates, state = tx.update(grads[t], state, params)
        moved.append({k: bool(jnp.abs(v).max() > 0) for k, v in
                      {'encoder': updates['encoder']['w'], 'mlp': updates['head']['mlp']['kernel'],
                       'last': updates['head']['last_layer']['kernel']}.items()})
    assert [m['encoder'] for m in moved] == [True, True, True]
    assert [m['mlp'] for m in moved] == [False, True, True]
    assert [m['last'] for m in moved] == [False, False, True]


# ----- groups and errors ----------------------------------------------------------------------------------------------

def test_frozen_and_constant_lr_groups():
    c = make_config(name='sgd', lr=0.1, warmup_steps=0, weight_decay=0.0, momentum=0.0, lr_scaling='none',
                    constant_lr_heads=('predictor',))
    params = {'encoder': {'w': jnp.ones((2, 2))}, 'predictor': {'w': jnp.ones((2, 2))},
              'fixed': {'w': jnp.ones((2, 2))}}
    tx, _ = optim.create_optimizer(c, total_steps=10, steps_per_epoch=1, frozen_heads=('fixed',))
    state = tx.init(params)
    grads = jax.tree.map(jnp.ones_like, params)
    for _ in range(9):  # late in the cosine schedule
        updates, state = tx.update(grads, state, params)
    np.testing.assert_allclose(updates['predictor']['w'], -0.1)          # constant lr
    assert float(jnp.abs(updates['encoder']['w']).max()) < 0.01          # decayed lr
    np.testing.assert_array_equal(updates['fixed']['w'], 0.0)            # frozen


def test_unknown_group_and_optimizer_are_errors():
    params = {'encoder': {'w': jnp.ones((2, 2))}}
    with pytest.raises(ValueError, match='predictor'):
        optim.check_param_groups(make_config(constant_lr_heads=('predictor',)), params)
    with pytest.raises(ValueError, match='adamx'):
        optim.create_optimizer(make_config(name='adamx'), 10, 1)


@pytest.mark.parametrize('key,value', [('lars_variant', 'pytorch'), ('clip_grad_mode', 'layer'),
                                       ('clip_grad', -1.0), ('warmup_schedule', 'pl_bolts')])
def test_bad_optimizer_values_name_their_key(key, value):
    with pytest.raises(ValueError, match=f'optimizer.{key}'):
        optim.create_optimizer(make_config(**{key: value}), 10, 1)


def test_bad_freeze_steps_are_errors():
    params, _ = freeze_problem()
    with pytest.raises(ValueError, match='freeze_steps'):
        optim.create_optimizer(make_config(), 10, 1, freeze_steps={'head/last_layer': -1})
    with pytest.raises(ValueError, match='head/last'):
        optim.check_param_groups(make_config(), params, freeze_steps={'head/last': 2})
    tx, _ = optim.create_optimizer(make_config(), 10, 1, freeze_steps={'head/last': 2})
    with pytest.raises(ValueError, match='head/last'):
        tx.init(params)
