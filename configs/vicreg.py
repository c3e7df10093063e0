"""VICReg (Bardes et al. 2022): 25 invariance + 25 variance + 1 covariance, statistics over the global batch.

Embedded default:  python -m ssljax.main --config configs/vicreg.py --workdir workdirs/vicreg_mnist
CIFAR-10:          python -m ssljax.main --config configs/vicreg.py:dataset=cifar10 --config.dataset=image_folder \
                       --config.data_dir=../shared/datasets/cifar10-jpeg --workdir workdirs/vicreg_c10
Published defaults (the objective's, ssljax/objectives/vicreg.py): projector 3 x 8192, coefficients 25 / 25 / 1
(ImageNet); solo-learn CIFAR: 3 x 2048, LARS lr 0.3, wd 1e-4. BatchNorm per view (objective.bn_per_view = True): the
reference (facebookresearch/vicreg main_vicreg.py, VICReg.forward) and solo-learn run backbone and projector on each
view separately.
The variance term: the reference averages it over the two views (objective.variance_views = 'mean', the objective's
default and the embedded default's), solo-learn (solo/losses/vicreg.py variance_loss) sums them, so at the same
var_loss_weight 25 solo-learn's variance weight is twice the reference's; the CIFAR variant, which claims solo-learn's
recipe, sums them ('sum').
"""

from configs import common


def get_config(arg=None):
    c, a = common.method_config('vicreg', arg)
    embedded = a.dataset == 'mnist'
    common.redundancy_reduction_setup(c, embedded=embedded)
    if not embedded:
        common.recipe(
            c,
            "solo-learn's CIFAR VICReg (solo/losses/vicreg.py): the two views' variance terms summed",
            variance_views='sum',
        )
    return common.finish(c, a)
