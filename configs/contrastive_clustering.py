"""Contrastive Clustering (Li et al., AAAI 2021): instance head (NT-Xent over rows) and cluster head (NT-Xent over
the columns of the soft assignments, minus the entropy of the cluster marginal).

Embedded default (MNIST subset, resnet_mini, 2 CPU cores, minutes):
    python -m ssljax.main --config configs/contrastive_clustering.py --workdir workdirs/cc_mnist
CIFAR-10 image folders with the reference's settings (Yunfan-Li/Contrastive-Clustering config/config.yaml,
train.py, modules/network.py and transform.py: ResNet-34, batch 256, Adam lr 3e-4 constant, wd 0, tau_I 0.5,
tau_C 1.0, 10 clusters, heads Linear(512, 512) - ReLU - Linear to 128 / 10; views: crop (0.08, 1), flip, jitter
(0.4, 0.4, 0.4, 0.1) p 0.8, grayscale 0.2, no blur. The reference resizes CIFAR to 224 px and trains 1000 epochs;
this variant keeps 32 px with the CIFAR stem and 40 epochs):
    python -m ssljax.main --config configs/contrastive_clustering.py:dataset=cifar10 \
        --config.dataset=image_folder --config.data_dir=../shared/datasets/cifar10-jpeg --workdir workdirs/cc_c10

Clustering scores (summary.json): clustering_nmi / _acc / _ari from the cluster head's argmax (the objective's
cluster_assignments hook), feature_kmeans_nmi / _acc / _ari from k-means on the encoder's features.
objective.entropy_log_k: False (the paper's L_clu = contrast - H(Y)); True adds the code's constant 2 log K. The
logged loss and cluster loss follow it: by default 2 log K (4.605 for 10 clusters) below the reference code's printed
loss, with the same gradient.
"""

from configs import common
from ssljax.objectives import OBJECTIVES


def get_config(arg=None):
    c, a = common.method_config('contrastive_clustering', arg)
    embedded = a.dataset == 'mnist'
    common.set_views(c, 'simclr', strength=0.5, blur_prob=0.0)  # the reference's Transforms(s=0.5), no blur
    if embedded:  # Linear(rep_dim, rep_dim): resnet_mini 128, ResNet-18/34 512 (the objective's default)
        common.recipe(
            c, "the reference's heads at resnet_mini's width 128", instance_hidden=(128,), cluster_hidden=(128,)
        )
    if c.num_classes != OBJECTIVES['contrastive_clustering'].config_defaults()['num_clusters']:
        common.recipe(
            c, "one cluster per class of the dataset (the reference's CIFAR-10 K = 10)", num_clusters=c.num_classes
        )
    c.optimizer.name = 'adamw'  # torch.optim.Adam(lr=3e-4, weight_decay=0), constant learning rate
    c.optimizer.lr = 3e-4
    c.optimizer.lr_scaling = 'none'
    c.optimizer.final_lr = 3e-4
    c.optimizer.warmup_epochs = 0.0
    c.optimizer.weight_decay = 0.0
    c.optimizer.b1, c.optimizer.b2 = 0.9, 0.999
    c.evals.feature_kmeans = dict(type='feature_kmeans', every=0, network='', num_clusters=0)
    if not embedded:
        c.model.backbone = a.backbone or 'resnet34'
        c.model.cifar_stem_padding = 1  # not solo-learn's recipe: the library's stem (pad 1, 32 x 32 maps)
    return common.finish(c, a)
