"""Median triplet loss (Wang et al. 2021, "Solving Inefficiency of Self-supervised Representation Learning").

Embedded default (MNIST subset, resnet_mini, 2 CPU cores, minutes):
    python -m ssljax.main --config configs/triplet.py --workdir workdirs/triplet_mnist
    python -m ssljax.main --config configs/triplet.py:negative=truncated --workdir workdirs/triplet_trunc_mnist
CIFAR-10 image folders (no published CIFAR recipe: solo-learn's BYOL CIFAR recipe, whose heads and target the
reference shares: ResNet-18, batch 256, LARS lr 1.0 wd 1e-5, 4096-256 projector and predictor, EMA 0.99 -> 1):
    python -m ssljax.main --config configs/triplet.py:dataset=cifar10 \
        --config.dataset=image_folder --config.data_dir=../shared/datasets/cifar10-jpeg --workdir workdirs/trip_c10

Loss settings (wanggrun/triplet configs/selfsup/triplet/r50_bs4096_accumulate4_ep1000_fp16_triplet_gpu3090.py and
TripletLossHead): gamma 2, margin 100, base momentum 0.99 -> 1; `negative` median (the paper, default) | truncated
(the released code: mean of the 2nd..10th most similar negatives; objective.truncate_lo/hi 1, 10). Negatives span the
global batch (objective.neg_group 0); the reference's per-GPU negatives are objective.neg_group = per-GPU batch.
The reference's ImageNet optimizer: LARS lr 4.8 at batch 4096 (0.3 x B/256), wd 1e-6, 10 warm-up epochs.
These are the objective's defaults (ssljax/objectives/triplet.py); the overrides below are the embedded budget's heads
and the `negative` variant argument.
"""

from configs import byol, common
from ssljax.objectives.triplet import NEGATIVES


def get_config(arg=None):
    c, a = common.method_config('triplet', arg, objective_args=('negative',))
    if a.negative not in NEGATIVES:
        raise ValueError(f'unknown config argument value negative={a.negative!r}; known: {", ".join(NEGATIVES)}')
    embedded = a.dataset == 'mnist'
    common.set_views(c, 'byol' if embedded else 'solo_byol_cifar')
    if embedded:
        byol.embedded_heads(c)
    if not embedded:
        common.solo_cifar_optimizer(c, lr=1.0, weight_decay=1e-5)
    return common.finish(c, a)
