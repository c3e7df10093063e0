"""MAE (He et al. 2022): masked autoencoder on a ViT; 75% of the patches masked, MSE on them (norm_pix_loss).

Embedded default (MNIST subset, a 4-block ViT-Tiny width 192, patch 7 on 28 px = 16 patches, batch 256, AdamW;
2 CPU cores, minutes; results in experiments/masked/README.md):
    python -m ssljax.main --config configs/mae.py --workdir workdirs/mae_mnist
CIFAR-10 image folders (ViT-Tiny, patch 4 on 32 px, 40 epochs):
    python -m ssljax.main --config configs/mae.py:dataset=cifar10 \
        --config.dataset=image_folder --config.data_dir=../shared/datasets/cifar10-jpeg --workdir workdirs/mae_c10
CPU budget on CIFAR-10 (1 epoch, the 4-block ViT-Tiny at patch 8, lr 1e-3; the full command in
experiments/masked/README.md): linear 41.7, fine-tune (3 epochs, 10k images) 35.6, kNN 30.1
(random init 39.0 / - / 29.6); 337 s on 2 CPU cores.

The reference's defaults (facebookresearch/mae, PRETRAIN.md and models_mae.py): mask ratio 0.75, decoder 512 wide,
8 blocks, 16 heads, norm_pix_loss, AdamW blr 1.5e-4 x B/256, betas (0.9, 0.95), wd 0.05, 40 warm-up epochs then
cosine, batch 4096, random resized crop (0.2, 1) + flip, no colour augmentation; ViT-B/16 fine-tune 83.6, linear 68.0.
The CIFAR / ImageNet variants keep them (the decoder narrowed to the encoder's width for ViT-Tiny / Small: 256 wide,
4 blocks, 8 heads; warm-up 10% of the run); the embedded default uses a 128-wide 2-block decoder, blr 1e-3 and a
1-epoch warm-up so that a few-minute run learns something.

Evaluators added to the defaults: ``reconstruction`` (PNG grids original / masked / reconstruction in
DIR/figures and TensorBoard) and ``finetune`` (full fine-tuning, AdamW + layer-wise lr decay + drop-path); the
``linear`` probe standardises the features with train statistics, which is MAE's BatchNorm-without-affine head.
"""

from configs import common
from ssljax.models import registry


def masked_setup(c, a, *, mask_mode: str = 'drop', decoder: bool = True) -> None:
    """What MAE, SimMIM and contrastive + masked share: a ViT (by default), AdamW, the two extra evaluators."""
    embedded = a.dataset == 'mnist'
    if not a.backbone:
        c.model.backbone = 'vit_tiny'
    vit = c.model.backbone.startswith('vit')
    if vit:
        # 28 px MNIST: 7 px patches (a 4 x 4 grid) keep the embedded runs at minutes on a CPU; 32 px CIFAR: 4 px.
        c.model.patch_size = 7 if embedded else 4 if a.dataset in ('cifar10', 'cifar100') else 16
        c.model.mask_mode = mask_mode
        c.model.drop_path_rate = 0.0
        # Every ViT config carries its depth, so that --config.model.depth=N makes a shallower encoder (CPU budgets);
        # the embedded default uses a 4-block ViT-Tiny so that its runs take minutes on a CPU.
        c.model.depth = 4 if embedded and not a.backbone else registry.BACKBONES[c.model.backbone].keywords['depth']
    if decoder and embedded:  # the objective's default decoder is the reference's, 512 wide, 8 blocks, 16 heads
        common.recipe(
            c,
            'the embedded MNIST budget: a 128-wide 2-block decoder',
            decoder_dim=128,
            decoder_depth=2,
            decoder_heads=4,
        )
    elif decoder and c.model.backbone in ('vit_tiny', 'vit_small'):
        common.recipe(
            c, "the decoder narrowed to ViT-Tiny / Small's width", decoder_dim=256, decoder_depth=4, decoder_heads=8
        )
    # objective.probe_unmasked: the online probe on the masked view (False, the default: free, understates) or on
    # the whole view (one more forward a step)
    c.optimizer.name = 'adamw'
    c.optimizer.lr = 1e-3 if embedded else 1.5e-4
    c.optimizer.lr_scaling = 'linear'
    c.optimizer.weight_decay = 0.05
    c.optimizer.b1, c.optimizer.b2 = 0.9, 0.95
    c.optimizer.warmup_epochs = 1.0 if embedded else (40.0 if a.dataset == 'imagenet2012' else 4.0)
    c.optimizer.warmup_init_lr = 0.0
    c.optimizer.final_lr = 0.0
    if embedded:
        c.epochs = 20.0
    c.evals.reconstruction = dict(type='reconstruction', every=0, network='', num_images=8, seed=0)
    c.evals.finetune = dict(
        type='finetune',
        every=0,
        network='',
        epochs=5 if embedded else 20,
        lr=1e-3,
        batch_size=128,
        weight_decay=0.05,
        layer_decay=0.75,
        drop_path=0.1,
        warmup_epochs=0.5 if embedded else 1.0,
        label_smoothing=0.1,
        crop_min_scale=0.35 if embedded else 0.08,
        flip_prob=0.0 if embedded else 0.5,
        max_train_examples=0,
    )


def get_config(arg=None):
    c, a = common.method_config('mae', arg)
    common.set_views(c, 'none', crop_scale=(0.2, 1.0), crop_ratio=(3 / 4, 4 / 3), flip_prob=0.5)
    c.augment.views.view.mask_ratio = 0.75
    masked_setup(c, a)
    return common.finish(c, a)
