"""iSogCLR (Qiu et al., ICML 2023): SogCLR with an individual, learned temperature per training image.

Embedded default (MNIST subset, resnet_mini, 2 CPU cores, minutes; SimCLR's embedded views, projector and
optimizer, so that only the loss differs):
    python -m ssljax.main --config configs/isogclr.py --workdir workdirs/isogclr_mnist
CIFAR-10 image folders with the reference's unimodal recipe (zhqiu/contrastive-learning-iSogCLR,
unimodal_exps/readme.md and main_supcon.py: ResNet-18, batch 128, LARS lr 0.8 (not scaled), wd 5e-4, 10 warm-up
epochs from 0.01, cosine; the shared projector 8192-8192-8192 with BN (losses.py Projector, whose last Linear has
no bias; here it has one); views: crop (0.2, 1), jitter (0.4, 0.4, 0.4, 0.1) p 0.8, grayscale 0.2, blur p 0.5, flip;
DRO_tau_init 0.1, DRO_rho 0.4, DRO_gamma 0.8, DRO_beta_u 0.5, DRO_eta_init 0.03 constant, tau in [0.05, 1.0]; the
reference trains 400 epochs, this variant 40):
    python -m ssljax.main --config configs/isogclr.py:dataset=cifar10 \
        --config.dataset=image_folder --config.data_dir=../shared/datasets/cifar10-jpeg --workdir workdirs/isogclr_c10

The objective's defaults are the reference's (tau_init 0.1, rho 0.4, gamma 0.8, beta_u 0.5, eta 0.03, the 8192
projector; ssljax/objectives/isogclr.py); the embedded default overrides only the projector.
objective.variant: 'paper' (default: h_i(z) = s(x_i, z) - s(x_i, x_i+) in the exponent, as the paper's objective)
or 'code' (both released codes: s(x_i, z) in the exponent, the positive subtracted outside). The temperatures
tau_i live in the objective state (sharded over the devices, checkpointed); train metrics tau_mean / tau_min /
tau_max are the batch's, and the ``isogclr`` evaluator (type isogclr_tau) writes their statistics over the whole
training set and a histogram, figures/isogclr_tau_<step>.png.
"""

from configs import common


def get_config(arg=None):
    c, a = common.method_config('isogclr', arg)
    embedded = a.dataset == 'mnist'
    common.set_views(c, 'simclr')
    if embedded:
        common.recipe(
            c,
            "SimCLR's embedded MNIST projector, so that only the loss differs",
            projector_hidden=(512,),
            projector_dim=128,
        )
    c.evals.isogclr = dict(type='isogclr_tau', every=-1, network='', bins=40)
    if not embedded:
        common.set_views(c, 'solo_simclr_cifar')
        view = c.augment.views.view
        view.crop_scale = (0.2, 1.0)
        view.brightness, view.contrast, view.saturation, view.hue = 0.4, 0.4, 0.4, 0.1
        c.batch_size = 128
        c.optimizer.name = 'lars'
        c.optimizer.lr = 0.8
        c.optimizer.lr_scaling = 'none'
        c.optimizer.weight_decay = 5e-4
        c.optimizer.warmup_epochs = 10.0
        c.optimizer.warmup_init_lr = 0.01
        c.optimizer.final_lr = 0.8 * 0.1**3  # SupContrast's cosine floor: lr * lr_decay_rate ** 3
        c.model.cifar_stem_padding = 1  # not solo-learn's recipe: the library's stem (pad 1, 32 x 32 maps), as before
    return common.finish(c, a)
