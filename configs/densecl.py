"""DenseCL (Wang et al., CVPR 2021): MoCo v2 plus a dense contrastive branch on the backbone's feature map, with a
second queue; L = (1 - lambda) L_global + lambda L_dense, lambda 0.5.

Embedded default (MNIST subset, resnet_mini whose 28 px feature map is 2 x 2 cells, 2 CPU cores, minutes): MoCo v2's
loss and 8 shuffled BatchNorm groups (32 images each, as 256 over 8 GPUs), heads 512-128, a queue of 2048 (8
batches of the 5,000-image set), key momentum 0.99 (0.999 lags about 1,000 steps, longer than this run), both necks
ending in BatchNorm without affine (objective.projector_last_bn, dense_projector_last_bn; off in the reference) and
the embedded budget's LARS lr 1.0, as MoCo v2's embedded recipe (configs/mocov2.py):
    python -m ssljax.main --config configs/densecl.py --workdir workdirs/densecl_mnist
Measured, 15 epochs (`--config.epochs=15`, 2 CPU cores at load 10-14, 1016 s): kNN 80.1 / linear 90.4 / online probe
73.6, loss 6.825 at step 15 -> 5.502 at 225; loss_lambda 0 (no dense branch): 81.2 / 92.1 / 77.0 (before the
centred necks: 49.9 / 82.6 / 31.6, and 62.8 kNN at loss_lambda 0; experiments/contrastive/README.md). At the
reference's 7 x 7 grid (`--config.model.cifar_stem=true`, 639 s at load 3.6) the dense branch costs more: 59.0 / 80.8
/ part-level 37.7 against 66.9 / 87.4 / 40.7 at loss_lambda 0 (random init 35.7 / 54.8; cause not established).
CIFAR-10 image folders with the reference's settings (WXinlong/DenseCL configs/selfsup/densecl/
densecl_imagenet_200ep.py: SGD lr 0.03 x B/256, momentum 0.9, wd 1e-4 on every parameter, cosine to 0, batch 256
on 8 GPUs (bn_groups 8), momentum 0.999, tau 0.2, lambda 0.5, necks 2048-2048-128 (fc and 1x1 conv, no BN); views:
crop (0.2, 1), jitter (0.4, 0.4, 0.4, 0.1) p 0.8, grayscale 0.2, blur p 0.5, flip. Its queue of 65,536 is larger
than CIFAR-10, so this variant keeps 32,768 (solo-learn's MoCo v2+ CIFAR queue); ResNet-18 with the CIFAR stem
(4 x 4 cells at 32 px), 40 epochs against the reference's 200 ImageNet epochs):
    python -m ssljax.main --config configs/densecl.py:dataset=cifar10 \
        --config.dataset=image_folder --config.data_dir=../shared/datasets/cifar10-jpeg --workdir workdirs/densecl_c10

Keys: objective.queue_size (a positive multiple of batch_size, else an error before compiling), temperature,
momentum, loss_lambda, bn_groups (0: one per device, 1: global BatchNorm, G: G shuffled groups); their defaults are
the reference's (ssljax/objectives/densecl.py).
"""

from configs import common


def get_config(arg=None):
    c, a = common.method_config('densecl', arg)
    embedded = a.dataset == 'mnist'
    common.set_views(c, 'simclr' if embedded else 'solo_simclr_cifar')
    view = c.augment.views.view
    view.brightness, view.contrast, view.saturation, view.hue = 0.4, 0.4, 0.4, 0.1
    if embedded:
        common.recipe(
            c,
            'the embedded MNIST budget: 512-128 necks, a queue of 2048 (8 batches), key momentum 0.99',
            projector_hidden=(512,),
            dense_projector_hidden=(512,),
            queue_size=2048,
            momentum=0.99,
        )
        common.recipe(
            c,
            "the embedded MNIST budget: both necks' outputs centred per batch (BatchNorm without affine), against "
            "MoCo v2's common-mode collapse (configs/mocov2.py, experiments/contrastive/README.md)",
            projector_last_bn=True,
            dense_projector_last_bn=True,
        )
        # the optimizer: the embedded budget's LARS lr 1.0 (configs/common.py), as MoCo v2's embedded recipe
    else:
        common.recipe(
            c, "CIFAR-10 is smaller than the reference's queue: solo-learn's MoCo v2+ CIFAR queue", queue_size=32768
        )
        c.optimizer.name = 'sgd'
        c.optimizer.lr = 0.03
        c.optimizer.weight_decay = 1e-4
        c.optimizer.momentum = 0.9
        c.optimizer.exclude_bias_and_norm = False  # torch SGD decays every parameter
        view.crop_scale = (0.2, 1.0)
        c.optimizer.warmup_epochs = 0.0
    return common.finish(c, a)
