"""SimSiam (Chen & He 2021): -1/2 [s(p_a, sg z_b) + s(p_b, sg z_a)], no target network, predictor lr kept constant.

Embedded default:  python -m ssljax.main --config configs/simsiam.py --workdir workdirs/simsiam_mnist
CIFAR-10:          python -m ssljax.main --config configs/simsiam.py:dataset=cifar10 --config.dataset=image_folder \
                       --config.data_dir=../shared/datasets/cifar10-jpeg --workdir workdirs/simsiam_c10
Published defaults: projector 3 x 2048 (last BN without affine), predictor 2048-512-2048, SGD lr 0.05 x B/256,
wd 1e-4, momentum 0.9 (CIFAR: solo-learn uses lr 0.5, wd 1e-5).
"""
from configs import common


def get_config(arg=None):
    c, a = common.method_config('simsiam', arg)
    embedded = a.dataset == 'mnist'
    c.augment.recipe = 'simclr'
    width = 512 if embedded else 2048
    c.objective.projector_hidden = (width, width)
    c.objective.projector_dim = width
    c.objective.projector_bn = True
    c.objective.predictor_hidden = (width // 4,)
    c.objective.predictor_dim = width
    c.objective.predictor_bn = True
    c.optimizer.name = 'sgd'
    c.optimizer.lr = 0.05
    c.optimizer.weight_decay = 1e-4
    c.optimizer.momentum = 0.9
    c.optimizer.warmup_epochs = 1.0 if embedded else 10.0
    c.optimizer.constant_lr_heads = ('predictor',)
    if not embedded:
        c.augment.recipe = 'solo_simclr_cifar'
        c.optimizer.lr = 0.5
        c.optimizer.weight_decay = 1e-5
    return common.finish(c, a)
