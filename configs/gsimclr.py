"""G-SimCLR (Chakraborty, Gosthipaty & Paul, ICDM-W 2020): NT-Xent on batches without two images of one pseudo-label.

The ``gsimclr`` sampler (ssljax/objectives/gsimclr.py) clusters the training set with k-means (k = batch size) on the
current encoder's features before step 0 and every ``sampler.refresh_epochs`` epochs (0: only before step 0, i.e.
a frozen encoder) and draws batches of B distinct pseudo-labels; its state (the labels) is checkpointed.

Embedded default (MNIST subset, resnet_mini, 2 CPU cores, minutes; SimCLR's embedded settings, so that the batches
are the only difference):
    python -m ssljax.main --config configs/gsimclr.py --workdir workdirs/gsimclr_mnist
CIFAR-10 image folders with the reference's settings (ariG23498/G-SimCLR CIFAR10/SimCLR_Pseudo_Labels notebook:
batch 64, k = 64 clusters computed once (there on a denoising autoencoder's latents: refresh_epochs 0 here, the
initial encoder), tau 0.1, projector 256-128-50 without BN, SGD lr 0.1 without momentum or weight decay (cosine
here, CosineDecayRestarts there), views: flip, jitter p 0.5 of strength 0.2, no crop (its colour drop returns its
input, so no grayscale); the notebook uses a ResNet-20-style network for 15 epochs, this variant ResNet-18, 40):
    python -m ssljax.main --config configs/gsimclr.py:dataset=cifar10 \
        --config.dataset=image_folder --config.data_dir=../shared/datasets/cifar10-jpeg --workdir workdirs/gsimclr_c10

sampler.batching: 'distinct' (default, the paper: no two images of a batch share a pseudo-label) or 'reference'
(the notebook's fixed order by rank within cluster, cut into consecutive batches).
"""

from configs import common


def get_config(arg=None):
    c, a = common.method_config('gsimclr', arg)
    embedded = a.dataset == 'mnist'
    common.set_views(c, 'simclr')
    if embedded:  # the dataset=cifar10 variant keeps the notebook's values, the objective's defaults
        common.recipe(
            c,
            "SimCLR's embedded MNIST settings, so that the batches are the only difference",
            temperature=0.2,
            projector_hidden=(512,),
            projector_dim=128,
            projector_bn=True,
            bn_per_view=False,
        )
    c.sampler.name = 'gsimclr'
    c.sampler.num_clusters = 0  # 0: the global batch size (the paper's k)
    c.sampler.refresh_epochs = 1.0 if embedded else 0.0
    c.sampler.network = ''
    c.sampler.batching = 'distinct'
    if not embedded:
        c.batch_size = 64
        view = c.augment.views.view
        view.crop_scale, view.crop_ratio = (1.0, 1.0), (1.0, 1.0)
        view.jitter_prob, view.grayscale_prob, view.blur_prob = 0.5, 0.0, 0.0
        view.brightness, view.contrast, view.saturation, view.hue = 0.16, 0.16, 0.16, 0.04  # 0.8 s, 0.2 s; s = 0.2
        c.optimizer.name = 'sgd'
        c.optimizer.lr = 0.1
        c.optimizer.lr_scaling = 'none'
        c.optimizer.momentum = 0.0
        c.optimizer.weight_decay = 0.0
        c.optimizer.warmup_epochs = 0.0
        c.model.cifar_stem_padding = 1  # not solo-learn's recipe: the library's stem (pad 1, 32 x 32 maps), as before
    return common.finish(c, a)
