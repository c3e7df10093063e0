"""MoCo v2 (Chen et al. 2020): momentum key encoder, FIFO queue of keys, shuffled BatchNorm, MLP head.

Embedded default (MNIST subset, resnet_mini, 2 CPU cores, minutes):
    python -m ssljax.main --config configs/mocov2.py --workdir workdirs/mocov2_mnist
CIFAR-10 image folders with solo-learn's MoCo v2+ recipe (scripts/pretrain/cifar/mocov2plus.yaml: ResNet-18,
batch 256, SGD lr 0.3 wd 1e-4, queue 32768, tau 0.2, projector 2048-256, momentum 0.99 -> 0.999, symmetric loss,
views symmetric_weak (jitter 0.4/0.4/0.4/0.1, blur 0.5), SyncBN on one GPU, i.e. no shuffling: bn_groups 1):
    python -m ssljax.main --config configs/mocov2.py:dataset=cifar10 \
        --config.dataset=image_folder --config.data_dir=../shared/datasets/cifar10-jpeg --workdir workdirs/mocov2_c10

The paper's ImageNet settings (facebookresearch/moco main_moco.py --mlp --moco-t 0.2 --aug-plus --cos): queue 65536,
m 0.999 constant, tau 0.2, head 2048-2048-128 without BN, SGD lr 0.03 x B/256, wd 1e-4, 8 GPUs (shuffled BN over
8 groups), asymmetric loss (queries from view 1 only). The embedded default keeps the paper's loss and 8 shuffled
BatchNorm groups (32 images each, as 256 over 8 GPUs; on 1 CPU device they run as 8 groups of one vmapped forward),
with a queue of 2048 (8 batches of the 5,000-image set) and solo-learn's short-schedule momentum 0.99 -> 0.999; it
departs from the paper in two places, both measured (experiments/contrastive/README.md): the head's output is
centred per batch (objective.projector_last_bn, BatchNorm without affine; off in the paper) and the optimizer is the
embedded budget's LARS lr 1.0 (SimCLR's). Measured, 15 epochs (`--config.epochs=15`, 2 CPU cores at load 8-9, 366 s):
kNN 82.3 / linear 91.7 / online probe 74.5 (SimCLR 81.4 / 93.2 / 75.9), loss 7.667 at step 15 -> 6.827 at 225; the
paper's head and SGD lr 0.3 (the recipe before): kNN 65.4, the loss rising to ln 2049.
Keys: objective.queue_size (a multiple of batch_size, else an error before compiling), temperature, bn_groups
(0: one per device, 1: global BatchNorm, n: n shuffled groups), symmetric, ema_base, ema_final. Their defaults are
the paper's (ssljax/objectives/moco.py); the overrides below are the embedded budget's and solo-learn's.
"""

from configs import common


def moco_v2_setup(c, embedded: bool) -> None:
    """MoCo v2's heads, queue and optimizer (shared with MoCHi's config)."""
    common.set_views(c, 'simclr' if embedded else 'solo_simclr_cifar')
    view = c.augment.views.view
    view.brightness, view.contrast, view.saturation, view.hue = 0.4, 0.4, 0.4, 0.1  # MoCo v2's aug-plus jitter
    if embedded:
        common.recipe(
            c,
            "the embedded MNIST budget: a 512-wide head, a queue of 8 batches, the paper's 8 shuffled BatchNorm groups",
            projector_hidden=(512,),
            queue_size=2048,
            bn_groups=8,
        )
        common.recipe(
            c,
            'the embedded MNIST budget: the projection centred per batch (BatchNorm without affine on the output); '
            "without it every query collapses onto one direction within 20 steps (experiments/contrastive/README.md)",
            projector_last_bn=True,
        )
        # The optimizer is the embedded budget's (configs/common.py: LARS lr 1.0, wd 1e-5, as SimCLR's): with the
        # paper's SGD at solo-learn's lr 0.3 the centred head learns about half as fast (kNN 70.9 vs 78.6 at 120 steps).
    else:
        common.recipe(
            c,
            "solo-learn's CIFAR MoCo v2+ (scripts/pretrain/cifar/mocov2plus.yaml): projector 2048-256, "
            "queue 32768, SyncBN on one GPU (bn_groups 1), the symmetric loss",
            projector_dim=256,
            queue_size=32768,
            bn_groups=1,
            symmetric=True,
        )
        c.optimizer.name = 'sgd'
        c.optimizer.lr = 0.3
        c.optimizer.weight_decay = 1e-4
        c.optimizer.momentum = 0.9
        c.optimizer.exclude_bias_and_norm = False  # torch SGD decays every parameter (reference and solo-learn)
        c.optimizer.warmup_epochs = 10.0
        c.optimizer.warmup_init_lr = 3e-5  # solo-learn's warmup_cosine
        c.optimizer.warmup_schedule = 'solo_learn'  # its LinearWarmupCosineAnnealingLR: the peak at step W - 1
    common.recipe(c, "solo-learn's short-schedule key momentum 0.99 -> 0.999 (mocov2plus.yaml)", ema_base=0.99)


def get_config(arg=None):
    c, a = common.method_config('mocov2', arg)
    moco_v2_setup(c, a.dataset == 'mnist')
    return common.finish(c, a)
