"""SimSiam (Chen & He 2021): -1/2 [s(p_a, sg z_b) + s(p_b, sg z_a)], no target network, predictor lr kept constant.

Embedded default:  python -m ssljax.main --config configs/simsiam.py --workdir workdirs/simsiam_mnist
CIFAR-10:          python -m ssljax.main --config configs/simsiam.py:dataset=cifar10 --config.dataset=image_folder \
                       --config.data_dir=../shared/datasets/cifar10-jpeg --workdir workdirs/simsiam_c10
Published defaults: projector 3 x 2048 (last BN without affine), predictor 2048-512-2048, SGD lr 0.05 x B/256,
wd 1e-4, momentum 0.9. BatchNorm per view (objective.bn_per_view = True): the reference (facebookresearch/simsiam
simsiam/builder.py, z1 = encoder(x1), z2 = encoder(x2)) and solo-learn run each view separately.

dataset=cifar10 (and the other non-MNIST datasets): solo-learn's recipe, scripts/pretrain/cifar/simsiam.yaml with
solo/methods/simsiam.py, solo/methods/base.py and solo/args/pretrain.py defaults:
  model      ResNet-18, CIFAR stem padded by 2; projector Linear-BN-ReLU x 2 (2048, no bias) - Linear(2048) -
             BN(no affine); predictor Linear(512, no bias) - BN - ReLU - Linear(2048)  (proj_hidden_dim 2048,
             proj_output_dim 2048, pred_hidden_dim 512)
  views      augmentations/symmetric_weak.yaml, 2 crops: random resized crop 32 (scale 0.08-1), colour jitter p 0.8
             (brightness 0.4, contrast 0.4, saturation 0.4, hue 0.1), grayscale p 0.2, Gaussian blur p 0.5,
             no solarization, flip p 0.5 (= solo_simclr_cifar with the jitter edited)
  optimizer  SGD momentum 0.9 (solo's default for sgd), lr 0.5 x B/256, wd 1e-5 on every parameter
             (exclude_bias_n_norm_wd defaults to False), warmup_cosine: 10 warm-up epochs from 3e-5 (the peak at
             step W - 1, optimizer.warmup_schedule = 'solo_learn'), cosine to 0;
             the predictor's lr stays constant (static_lr)
  batch 256, 1000 epochs in the yaml (40 here, the comparison budget; override with :epochs=N)
"""

from configs import common


def get_config(arg=None):
    c, a = common.method_config('simsiam', arg)
    embedded = a.dataset == 'mnist'
    common.set_views(c, 'simclr')
    if embedded:  # the paper's 2048-wide projector and 512 bottleneck, at a quarter of the width
        common.recipe(
            c,
            'the embedded MNIST budget: 512-wide projector, 128 bottleneck',
            projector_hidden=(512, 512),
            projector_dim=512,
            predictor_hidden=(128,),
            predictor_dim=512,
        )
    c.optimizer.name = 'sgd'
    c.optimizer.lr = 0.05
    c.optimizer.weight_decay = 1e-4
    c.optimizer.momentum = 0.9
    c.optimizer.warmup_epochs = 1.0 if embedded else 10.0
    c.optimizer.constant_lr_heads = ('predictor',)
    if not embedded:  # solo-learn's scripts/pretrain/cifar/simsiam.yaml (docstring)
        common.set_views(c, 'solo_simclr_cifar')
        view = c.augment.views.view  # symmetric_weak.yaml: two identical views, weaker colour jitter
        view.brightness, view.contrast, view.saturation, view.hue = 0.4, 0.4, 0.4, 0.1
        c.optimizer.name = 'sgd'
        c.optimizer.lr = 0.5
        c.optimizer.momentum = 0.9
        c.optimizer.weight_decay = 1e-5
        c.optimizer.exclude_bias_and_norm = False
        c.optimizer.warmup_epochs = 10.0
        c.optimizer.warmup_init_lr = 3e-5
        c.optimizer.warmup_schedule = 'solo_learn'  # LinearWarmupCosineAnnealingLR: the peak at step W - 1
        c.optimizer.final_lr = 0.0
    return common.finish(c, a)
