"""Barlow Twins (Zbontar et al. 2021): L = sum_i (1 - C_ii)^2 + lambda sum_{i!=j} C_ij^2 over the global batch.

Embedded default:  python -m ssljax.main --config configs/barlow_twins.py --workdir workdirs/barlow_mnist
CIFAR-10:          python -m ssljax.main --config configs/barlow_twins.py:dataset=cifar10 \
                       --config.dataset=image_folder --config.data_dir=../shared/datasets/cifar10-jpeg \
                       --workdir workdirs/barlow_c10
Published defaults (the objective's, ssljax/objectives/barlow_twins.py): projector 3 x 8192, lambda 0.0051, loss
scale 1 (ImageNet); solo-learn CIFAR: 3 x 2048, LARS lr 0.3, wd 1e-4, loss scale 0.1. BatchNorm per view
(objective.bn_per_view = True): the reference (facebookresearch/barlowtwins main.py, BarlowTwins.forward) and
solo-learn run backbone and projector on each view separately.
"""

from configs import common


def get_config(arg=None):
    c, a = common.method_config('barlow_twins', arg)
    common.redundancy_reduction_setup(c, embedded=a.dataset == 'mnist')
    common.recipe(
        c,
        "solo-learn's CIFAR Barlow Twins (scripts/pretrain/cifar/barlow.yaml), the embedded default's too",
        scale_loss=0.1,
    )
    return common.finish(c, a)
