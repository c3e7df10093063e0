"""SimMIM (Xie et al. 2022): learnable mask token, 60% of the mask patches masked, linear pixel head, L1 on them.

Embedded default (MNIST subset, the 4-block ViT-Tiny of configs/mae.py, patch 7 on 28 px, mask patch 7, batch 256,
AdamW; 2 CPU cores, minutes; results in experiments/masked/README.md):
    python -m ssljax.main --config configs/simmim.py --workdir workdirs/simmim_mnist
On a ResNet (masking at the input, a learnable fill value per channel; the decoder maps the last feature map to
pixels): ``configs/simmim.py:backbone=resnet_mini``.
CIFAR-10 image folders (ViT-Tiny, patch 4 on 32 px, mask patch 8, 40 epochs):
    python -m ssljax.main --config configs/simmim.py:dataset=cifar10 \
        --config.dataset=image_folder --config.data_dir=../shared/datasets/cifar10-jpeg --workdir workdirs/simmim_c10
CPU budget on CIFAR-10 (1 epoch, the 4-block ViT-Tiny at patch 8, lr 1e-3; the full command in
experiments/masked/README.md): linear 37.6, fine-tune (3 epochs, 10k images) 30.6, kNN 27.5
(random init 39.0 / - / 29.6); 251 s on 2 CPU cores.

The reference's ViT-B defaults (microsoft/SimMIM, configs/vit_base__800ep/simmim_pretrain__vit_base__img224__800ep.yaml
and data/data_simmim.py): image 224, model patch 16, mask patch 32, mask ratio 0.6, drop-path 0.1, AdamW lr 1e-4 x
B/512 (here x B/256 with the same product at B = 2048: 5e-5 per 256), wd 0.05, 10 warm-up epochs, views: random resized
crop (0.67, 1) + flip. The ImageNet variant keeps them; the small-image variants keep the mask patch at twice the
model patch where the image allows it (8 on 32 px; 7 = the model patch on MNIST's 28 px) and the AdamW settings of
configs/mae.py so that the methods of experiments/masked share one budget and optimizer.
"""

from configs import common
from configs.mae import masked_setup


def get_config(arg=None):
    c, a = common.method_config('simmim', arg)
    common.set_views(c, 'none', crop_scale=(0.67, 1.0), crop_ratio=(3 / 4, 4 / 3), flip_prob=0.5)
    masked_setup(c, a, mask_mode='token', decoder=False)
    c.augment.views.view.mask_ratio = 0.6
    if a.dataset == 'mnist':
        c.augment.views.view.mask_patch_size = 7
    elif a.dataset == 'imagenet2012':
        c.augment.views.view.mask_patch_size = 32
        c.model.drop_path_rate = 0.1 if c.model.backbone.startswith('vit') else 0.0
        c.optimizer.lr = 5e-5
        c.optimizer.b1, c.optimizer.b2 = 0.9, 0.999
        c.optimizer.warmup_epochs = 10.0
    else:
        c.augment.views.view.mask_patch_size = 8
    return common.finish(c, a)
