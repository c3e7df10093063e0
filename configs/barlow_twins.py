"""Barlow Twins (Zbontar et al. 2021): L = sum_i (1 - C_ii)^2 + lambda sum_{i!=j} C_ij^2 over the global batch.

Embedded default:  python -m ssljax.main --config configs/barlow_twins.py --workdir workdirs/barlow_mnist
CIFAR-10:          python -m ssljax.main --config configs/barlow_twins.py:dataset=cifar10 --config.dataset=image_folder \
                       --config.data_dir=../shared/datasets/cifar10-jpeg --workdir workdirs/barlow_c10
Published defaults: projector 3 x 8192, lambda 0.0051 (ImageNet); solo-learn CIFAR: 3 x 2048, LARS lr 0.3,
wd 1e-4, loss scale 0.1.
"""
from configs import common


def get_config(arg=None):
    c, a = common.method_config('barlow_twins', arg)
    embedded = a.dataset == 'mnist'
    width = 1024 if embedded else 2048
    c.augment.recipe = 'byol' if embedded else 'solo_byol_cifar'
    c.objective.projector_hidden = (width, width)
    c.objective.projector_dim = width
    c.objective.projector_bn = True
    c.objective.lambd = 0.0051
    c.objective.scale_loss = 0.1
    c.optimizer.lr = 0.3
    c.optimizer.weight_decay = 1e-4
    if not embedded:
        common.solo_cifar_optimizer(c, lr=0.3, weight_decay=1e-4)
    return common.finish(c, a)
