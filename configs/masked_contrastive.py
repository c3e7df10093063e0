"""Contrastive + masked: MAE's reconstruction + weight x (NT-Xent or BYOL) on the pooled masked views of a ViT.

One switch between the two ends (ssljax/objectives/masked_contrastive.py): ``:weight=0`` is MAE (on two views),
``:contrastive_only=true`` drops the masks and the reconstruction (a contrastive-only ViT, SimCLR's loss).
Embedded default (MNIST subset, the 4-block ViT-Tiny of configs/mae.py, two SimCLR views each with 75% of the
patches masked, NT-Xent tau 0.2, weight 1; 2 CPU cores, minutes; results in experiments/masked/README.md):
    python -m ssljax.main --config configs/masked_contrastive.py:weight=0.1 --workdir workdirs/mc01_mnist
    python -m ssljax.main --config configs/masked_contrastive.py:contrastive_only=true --workdir workdirs/vit_simclr
BYOL-style term (predictor, EMA target on the unmasked views, as CMAE's momentum branch):
    python -m ssljax.main --config configs/masked_contrastive.py:term=byol --workdir workdirs/mc_byol_mnist
CPU budget on CIFAR-10 (``:dataset=cifar10``, 1 epoch, the 4-block ViT-Tiny at patch 8, lr 1e-3; the full
command in experiments/masked/README.md): linear / fine-tune (3 epochs, 10k images) / kNN: weight 0.1 41.0 / 33.4 /
32.5 (505 s), weight 1.0 40.4 / 35.3 / 32.8 (496 s), contrastive-only 41.2 / 36.5 / 34.8 (335 s); random init 39.3 /
- / 30.0; 2 CPU cores.
Other args: ``mask_ratio`` (both views; default 0.75), the shared ``dataset``, ``backbone``, ``epochs``, ``batch_size``.

Views: SimCLR's recipe (jitter 0.8 / 0.8 / 0.8 / 0.2 p 0.8, grayscale 0.2, crop, flip; no blur on MNIST), because
the contrastive term needs them; the decoder, optimizer (AdamW) and budget are configs/mae.py's.
"""

from configs import byol, common
from configs.mae import masked_setup


def get_config(arg=None):
    c, a = common.method_config(
        'masked_contrastive', arg, objective_args=('weight', 'term'), contrastive_only=False, mask_ratio=0.75
    )
    embedded = a.dataset == 'mnist'
    common.set_views(c, 'simclr' if embedded else 'solo_simclr_cifar')
    for name in c.augment.order:
        c.augment.views[name].mask_ratio = 0.0 if a.contrastive_only else a.mask_ratio
    masked_setup(c, a)
    if embedded:
        byol.embedded_heads(c)
    else:
        common.recipe(c, 'the ViT-Tiny budget: 2048-wide heads', projector_hidden=(2048,), predictor_hidden=(2048,))
    common.recipe(c, byol.SOLO_EMA, ema_base=0.99)
    if a.contrastive_only:
        del c.evals['reconstruction']
    return common.finish(c, a)
