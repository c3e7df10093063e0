"""The method configs carry their references' settings: BatchNorm per view, DINO's optimizer recipes, and the
solo-learn CIFAR variants of SimSiam and DINO (values from solo-learn's scripts/pretrain/cifar/*.yaml)."""

import pytest

from configs import barlow_twins, byol, dino, directpred, simclr, simsiam, vicreg
from ssljax.models import registry
from ssljax.objectives import Context, create_objective

# (config module, variant) -> objective.bn_per_view: each reference's choice (see the config docstrings).
BN_PER_VIEW = [
    (simclr, '', False),  # google-research/simclr: views concatenated
    (simclr, 'dataset=cifar10', True),  # solo-learn: one forward per crop
    (byol, '', True),
    (byol, 'dataset=cifar10', True),
    (simsiam, '', True),
    (simsiam, 'dataset=cifar10', True),
    (directpred, '', True),
    (directpred, 'dataset=cifar10', True),
    (barlow_twins, '', True),
    (barlow_twins, 'dataset=cifar10', True),
    (vicreg, '', True),
    (vicreg, 'dataset=cifar10', True),
    (dino, '', False),  # MultiCropWrapper: crops of one resolution concatenated
    (dino, 'dataset=cifar10', True),  # solo-learn
]


@pytest.mark.parametrize('module,variant,expected', BN_PER_VIEW)
def test_bn_per_view_defaults_reach_the_objective(module, variant, expected):
    config = module.get_config(variant or None)
    assert config.objective.bn_per_view is expected
    encoder, dim = registry.create_encoder(config.model.backbone, cifar_stem=config.model.cifar_stem)
    objective = create_objective(
        config,
        Context(
            encoder=encoder,
            feature_dim=dim,
            total_steps=100,
            global_batch=config.batch_size,
            num_examples=50000,
            steps_per_epoch=195,
        ),
    )
    assert objective.bn_per_view is expected


def test_dino_defaults():
    c = dino.get_config()
    o = c.objective
    assert o.freeze_last_layer_epochs == 1 and o.bn_per_view is False
    # ResNet (embedded): main_dino.py's argparse optimizer (AdamW, clip 3.0, wd 0.04 -> 0.4), BN in the head and a flat
    # teacher tau of 0.03, below the argparse 0.04 as its help advises when the loss does not fall: experiments/dino
    # (the budget's LARS collapsed the head; at 0.04 the teacher's entropy sat on the 0.95 ln K bar).
    opt = c.optimizer
    assert (opt.name, opt.lr, opt.b1, opt.b2, opt.final_lr, opt.warmup_epochs) == ('adamw', 5e-4, 0.9, 0.999, 1e-6, 1.0)
    assert (opt.weight_decay, opt.weight_decay_end, opt.clip_grad, opt.clip_grad_mode) == (0.04, 0.4, 3.0, 'per_tensor')
    assert o.head_bn is True and (o.teacher_temp, o.warmup_teacher_temp_epochs) == (0.03, 0)
    # lightly's examples/pytorch/dino.py widths, the budget's EMA: teacher entropy ~0.90 ln K (experiments/dino).
    assert (o.head_hidden, o.head_bottleneck, o.head_out, o.ema_base, o.ema_final) == (512, 64, 2048, 0.99, 1.0)
    encoder, dim = registry.create_encoder(c.model.backbone, cifar_stem=c.model.cifar_stem)
    objective = create_objective(
        c,
        Context(
            encoder=encoder, feature_dim=dim, total_steps=100, global_batch=256, num_examples=5000, steps_per_epoch=19
        ),
    )
    assert objective.eval_network == 'teacher'
    assert objective.freeze_steps == {'head/last_layer': 19}


def test_dino_vit_uses_main_dino_adamw_recipe():
    c = dino.get_config('backbone=vit_small')
    opt = c.optimizer
    assert (opt.name, opt.lr, opt.b1, opt.b2, opt.final_lr) == ('adamw', 5e-4, 0.9, 0.999, 1e-6)
    assert (opt.weight_decay, opt.weight_decay_end, opt.clip_grad) == (0.04, 0.4, 3.0)
    assert opt.exclude_bias_and_norm


def test_dino_cifar_is_solo_learn_recipe():
    c = dino.get_config('dataset=cifar10')
    o, opt = c.objective, c.optimizer
    assert (o.head_hidden, o.head_bottleneck, o.head_out, o.head_layers, o.head_bn, o.norm_last_layer) == (
        2048,
        256,
        4096,
        3,
        False,
        True,
    )
    assert (o.student_temp, o.teacher_temp, o.warmup_teacher_temp_epochs) == (0.1, 0.07, 0)
    assert (o.ema_base, o.ema_final, o.center_momentum, o.freeze_last_layer_epochs) == (0.9995, 1.0, 0.9, 1)
    assert (opt.name, opt.lr, opt.weight_decay, opt.lars_eta, opt.lars_clip) == ('lars', 0.3, 1e-6, 0.02, True)
    assert opt.clip_grad == 0.0 and opt.weight_decay_end < 0
    # asymmetric.yaml: two crops, no local crops, solarization only on the second.
    views = c.augment.views
    assert c.augment.order == ('view1', 'view2')
    for name, solarize in (('view1', 0.0), ('view2', 0.2)):
        v = views[name]
        assert v.count == 1 and v.size == 0 and tuple(v.crop_scale) == (0.08, 1.0)
        assert (v.brightness, v.contrast, v.saturation, v.hue, v.jitter_prob) == (0.4, 0.4, 0.2, 0.1, 0.8)
        assert (v.grayscale_prob, v.blur_prob, v.flip_prob, v.solarize_prob) == (0.2, 0.0, 0.5, solarize)


def test_simsiam_cifar_is_solo_learn_recipe():
    c = simsiam.get_config('dataset=cifar10')
    o, opt = c.objective, c.optimizer
    assert (tuple(o.projector_hidden), o.projector_dim, tuple(o.predictor_hidden), o.predictor_dim) == (
        (2048, 2048),
        2048,
        (512,),
        2048,
    )
    assert (opt.name, opt.lr, opt.momentum, opt.weight_decay, opt.lr_scaling) == ('sgd', 0.5, 0.9, 1e-5, 'linear')
    assert (opt.warmup_epochs, opt.warmup_init_lr, opt.final_lr) == (10.0, 3e-5, 0.0)
    assert opt.exclude_bias_and_norm is False and tuple(opt.constant_lr_heads) == ('predictor',)
    # symmetric_weak.yaml: two identical crops.
    assert c.augment.order == ('view',)
    v = c.augment.views.view
    assert v.count == 2 and tuple(v.crop_scale) == (0.08, 1.0)
    assert (v.brightness, v.contrast, v.saturation, v.hue, v.jitter_prob) == (0.4, 0.4, 0.4, 0.1, 0.8)
    assert (v.grayscale_prob, v.blur_prob, v.solarize_prob, v.flip_prob) == (0.2, 0.5, 0.0, 0.5)


def test_directpred_family_defaults():
    o = directpred.get_config().objective
    assert (o.predictor_write, o.directcopy_norm, o.freq, o.rho, o.eps) == ('after_freq', 'frobenius', 1, 0.3, 0.01)
