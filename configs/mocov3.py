"""MoCo v3 (Chen, Xie & He 2021): symmetric in-batch contrast, predictor, momentum encoder on a cosine schedule.

Embedded default (MNIST subset, resnet_mini, 2 CPU cores, minutes):
    python -m ssljax.main --config configs/mocov3.py --workdir workdirs/mocov3_mnist
CIFAR-10 image folders with solo-learn's recipe (scripts/pretrain/cifar/mocov3.yaml: ResNet-18, batch 256,
LARS lr 0.3 wd 1e-6 eta 0.02 clip, projector 4096-256, predictor 4096-256, tau 0.2, momentum 0.99 -> 1.0, BYOL's
asymmetric views):
    python -m ssljax.main --config configs/mocov3.py:dataset=cifar10 \
        --config.dataset=image_folder --config.data_dir=../shared/datasets/cifar10-jpeg --workdir workdirs/mocov3_c10
ViT setting (`:backbone=vit_small`, or vit_tiny / vit_base; facebookresearch/moco-v3 CONFIG.md): 3-layer projector,
predictor with a last BN, tau 0.2, AdamW lr 1.5e-4 x B/256, wd 0.1, warm-up 40/300 of the run, frozen random patch
projection (objective.freeze_patch_embed, the reference's --stop-grad-conv1).
The reference's ResNet-50 ImageNet defaults: tau 1.0, LARS lr 0.6 x B/256 (0.3 from 300 epochs), wd 1e-6,
m 0.99 -> 1 (--moco-m-cos), batch 4096, projector 2048-4096-256, predictor 256-4096-256 (MoCoV3's class defaults:
tau 1.0). The embedded default uses the CIFAR recipe's tau 0.2 and momentum at MNIST's 512-128 head widths.
"""

from configs import common


def get_config(arg=None):
    c, a = common.method_config('mocov3', arg)
    embedded = a.dataset == 'mnist'
    vit = c.model.backbone.startswith('vit')
    common.set_views(c, 'byol' if embedded else 'solo_byol_cifar')
    width = 512 if embedded else 4096
    if embedded:
        common.recipe(
            c,
            'the embedded MNIST budget: 512-128 projector and predictor',
            projector_hidden=(width,),
            projector_dim=128,
            predictor_hidden=(width,),
            predictor_dim=128,
        )
    if vit:
        common.recipe(
            c,
            "the reference's ViT recipe (CONFIG.md): a 3-layer projector, the predictor's last BN, the "
            "frozen random patch projection (--stop-grad-conv1)",
            projector_hidden=(width, width),
            predictor_last_bn=True,
            freeze_patch_embed=True,
        )
    common.recipe(
        c,
        "tau 0.2: solo-learn's CIFAR MoCo v3 (scripts/pretrain/cifar/mocov3.yaml) and the reference's ViT recipe",
        temperature=0.2,
    )
    if not embedded:
        common.solo_cifar_optimizer(c, lr=0.3, weight_decay=1e-6)
    c = common.finish(c, a)
    if vit:
        c.optimizer.name = 'adamw'
        c.optimizer.lr = 1.5e-4
        c.optimizer.weight_decay = 0.1
        c.optimizer.b1, c.optimizer.b2 = 0.9, 0.999  # torch AdamW defaults, as the reference
        c.optimizer.warmup_epochs = c.epochs * 40.0 / 300.0
        c.optimizer.warmup_init_lr = 0.0
    return c
