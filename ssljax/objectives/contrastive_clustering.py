"""Contrastive Clustering (Li et al., AAAI 2021): instance-level and cluster-level contrast on two heads.

Also registers the ``feature_kmeans`` evaluator: k-means on the encoder's features, scored like ``clustering``, for
methods whose ``clustering`` evaluator uses their own cluster assignments (this one's cluster head).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from ssljax.config_lib import ConfigError
from ssljax.evaluation import Evaluator, builtin, diagnostics, register_evaluator
from ssljax.models.heads import MLP
from ssljax.objectives import losses
from ssljax.objectives.base import Forward, LossOutput, Objective, init_heads, register


@register
@dataclasses.dataclass(frozen=True)
class ContrastiveClustering(Objective):
    """Contrastive Clustering: encoder f, instance head g_I (MLP to 128), cluster head g_C (MLP to K, softmax).

    For views a, b of B images: z^v = g_I(f(x^v)) [B, 128], Y^v = softmax(g_C(f(x^v))) [B, K];
        L = L_ins + L_clu
        L_ins = NT-Xent over the 2B rows of n(z^a), n(z^b), tau_I, averaged over the 2B anchors (losses.nt_xent_mean)
        L_clu = NT-Xent over the 2K columns of Y^a, Y^b (cosine), tau_C, averaged over the 2K anchors - H(Y),
                H(Y) = -sum_k [P^a_k log P^a_k + P^b_k log P^b_k],  P^v_k = sum_i Y^v_ik / sum_ik Y^v_ik
    (``losses.cc_cluster_loss``). The paper's L_clu is the default; ``entropy_log_k`` adds the reference code's
    constant 2 log K (Yunfan-Li/Contrastive-Clustering, ClusterLoss: ne_i = log K + sum_k P log P per view), same
    gradient. Logged values: ``cluster`` and the total ``loss`` are in the form chosen, so with the default they sit
    2 log K (4.605 at K = 10) below the numbers the reference code prints, and can be negative; ``cluster_entropy``
    is H(Y) (at most 2 log K) and ``cluster_contrast`` the NT-Xent term, the same in both forms. Heads as the code:
    Linear(d, h) - ReLU - Linear(h, out), no BatchNorm. Each view goes through the network on its own
    (``bn_per_view`` True, as the code's resnet(x_i), resnet(x_j)).
    :meth:`cluster_assignments` is argmax_k Y_k in eval mode, which the ``clustering`` evaluator scores (NMI, ACC,
    ARI); ``feature_kmeans`` scores k-means on the features.
    Defaults (the config keys): the reference's CIFAR-10 setting (Yunfan-Li/Contrastive-Clustering config.yaml and
    modules/network.py, ResNet-34): instance_temperature 0.5, cluster_temperature 1.0, num_clusters 10,
    entropy_log_k False (the paper's L_clu), heads 512-128 and 512-K (instance_hidden (512,), instance_dim 128,
    cluster_hidden (512,)), bn_per_view True.
    """

    name = 'contrastive_clustering'
    instance_temperature: float = 0.5
    cluster_temperature: float = 1.0
    num_clusters: int = 10
    entropy_log_k: bool = False
    instance_hidden: tuple = (512,)
    instance_dim: int = 128
    cluster_hidden: tuple = (512,)
    bn_per_view: bool = True

    @classmethod
    def check_config(cls, config, num_devices: int) -> None:
        v = cls.config_values(config)
        for key in ('instance_temperature', 'cluster_temperature'):
            if not v[key] > 0:
                raise ConfigError(f'config key "objective.{key}" must be > 0, got {v[key]!r}')
        if v['num_clusters'] < 2:
            raise ConfigError(f'config key "objective.num_clusters" must be >= 2, got {v["num_clusters"]}')

    @property
    def instance_projector(self) -> MLP:
        return MLP(
            hidden_dims=tuple(self.instance_hidden), out_dim=self.instance_dim, use_bn=False, dtype=self.ctx.dtype
        )

    @property
    def cluster_projector(self) -> MLP:
        return MLP(
            hidden_dims=tuple(self.cluster_hidden), out_dim=self.num_clusters, use_bn=False, dtype=self.ctx.dtype
        )

    def init(self, rng, encoder_variables):
        feats = jnp.zeros((2, self.ctx.feature_dim))
        return init_heads(
            rng,
            {
                'instance_projector': (self.instance_projector, (feats,)),
                'cluster_projector': (self.cluster_projector, (feats,)),
            },
        ), {}

    def loss(self, variables, objective_state, views, batch, rng):
        fw = Forward(variables, bn_per_view=self.bn_per_view)
        feats = [o['pooled'] for o in fw.encode(self.ctx.encoder, views[:2])]
        z_a, z_b = fw.apply_views('instance_projector', self.instance_projector, feats)
        y_a, y_b = (
            jax.nn.softmax(c, axis=-1) for c in fw.apply_views('cluster_projector', self.cluster_projector, feats)
        )
        instance = losses.nt_xent_mean(z_a, z_b, self.instance_temperature)
        cluster, metrics = losses.cc_cluster_loss(y_a, y_b, self.cluster_temperature, self.entropy_log_k)
        used = jnp.zeros(self.num_clusters).at[jnp.argmax(y_a, axis=-1)].set(1.0).sum()
        metrics = dict(metrics, instance=instance, cluster=cluster, clusters_used=used)
        return instance + cluster, LossOutput(metrics, fw.batch_stats, objective_state, feats[0])

    def cluster_assignments(self, variables, images):
        """argmax_k of the cluster head's softmax for eval-view images, networks in eval mode: int32 [B]."""
        fw = Forward(variables, train=False)
        feats = fw.apply('encoder', self.ctx.encoder, images)['pooled']
        return jnp.argmax(fw.apply('cluster_projector', self.cluster_projector, feats), axis=-1).astype(jnp.int32)


@register_evaluator
class FeatureKMeans(Evaluator):
    """k-means on the L2-normalised test features (as ``clustering`` does without an objective hook), scored with
    NMI, ACC and ARI against the labels; ``num_clusters`` 0 means the number of classes."""

    type = 'feature_kmeans'
    defaults = dict(num_clusters=0)

    @classmethod
    def check(cls, settings):
        return builtin.Clustering.check(settings)

    def run(self, state, step):
        test = self.features(state, 'test')
        k = self.settings.num_clusters or self.ctx.num_classes
        return diagnostics.kmeans_cluster_eval(test.host(), test.labels, min(k, test.count), seed=self.ctx.seed)
