"""VICReg (Bardes et al. 2022): 25 invariance + 25 variance + 1 covariance, statistics over the global batch.

Embedded default:  python -m ssljax.main --config configs/vicreg.py --workdir workdirs/vicreg_mnist
CIFAR-10:          python -m ssljax.main --config configs/vicreg.py:dataset=cifar10 --config.dataset=image_folder \
                       --config.data_dir=../shared/datasets/cifar10-jpeg --workdir workdirs/vicreg_c10
Published defaults (the objective's, ssljax/objectives/vicreg.py): projector 3 x 8192, coefficients 25 / 25 / 1
(ImageNet); solo-learn CIFAR: 3 x 2048, LARS lr 0.3, wd 1e-4. BatchNorm per view (objective.bn_per_view = True): the
reference (facebookresearch/vicreg main_vicreg.py, VICReg.forward) and solo-learn run backbone and projector on each
view separately.
"""

from configs import common


def get_config(arg=None):
    c, a = common.method_config('vicreg', arg)
    common.redundancy_reduction_setup(c, embedded=a.dataset == 'mnist')
    return common.finish(c, a)
