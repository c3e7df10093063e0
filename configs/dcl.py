"""DCL (Yeh et al. 2022): SimCLR with the positive removed from the denominator (configs/dclw.py: weighted).

Embedded default (MNIST subset, resnet_mini, 2 CPU cores, minutes):
    python -m ssljax.main --config configs/dcl.py --workdir workdirs/dcl_mnist
CIFAR-10 image folders (solo-learn has no DCL: its SimCLR CIFAR recipe, ResNet-18, batch 256, LARS lr 0.4 wd 1e-4,
projector 2048-256, with DCL's temperature):
    python -m ssljax.main --config configs/dcl.py:dataset=cifar10 \
        --config.dataset=image_folder --config.data_dir=../shared/datasets/cifar10-jpeg --workdir workdirs/dcl_c10
Temperature 0.1 (the DCL paper's ImageNet setting and lightly's DCLLoss default). Everything else is configs/simclr.py.
"""
from configs import simclr


def dcl_setup(method: str, arg):
    c = simclr.get_config(arg)
    c.method = method
    c.objective.temperature = 0.1
    return c


def get_config(arg=None):
    return dcl_setup('dcl', arg)
