"""DCL (Yeh et al. 2022): SimCLR with the positive removed from the denominator (configs/dclw.py: weighted).

Embedded default (MNIST subset, resnet_mini, 2 CPU cores, minutes):
    python -m ssljax.main --config configs/dcl.py --workdir workdirs/dcl_mnist
CIFAR-10 image folders (solo-learn has no DCL: its SimCLR CIFAR recipe, ResNet-18, batch 256, LARS lr 0.4 wd 1e-4,
projector 2048-256, with DCL's temperature):
    python -m ssljax.main --config configs/dcl.py:dataset=cifar10 \
        --config.dataset=image_folder --config.data_dir=../shared/datasets/cifar10-jpeg --workdir workdirs/dcl_c10
Temperature 0.1 (the DCL paper's ImageNet setting and lightly's DCLLoss default: the objective's default).
Everything else is configs/simclr.py's recipe.
"""

from configs import common, simclr


def dcl_setup(method: str, arg):
    c, a = common.method_config(method, arg)
    simclr.simclr_recipe(c, a.dataset == 'mnist')
    return common.finish(c, a)


def get_config(arg=None):
    return dcl_setup('dcl', arg)
