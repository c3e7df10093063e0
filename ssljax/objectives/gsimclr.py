"""G-SimCLR (Chakraborty, Gosthipaty & Paul, ICDM-W 2020): SimCLR on batches without two images of one pseudo-label.

The method is the batch composition: the ``gsimclr`` sampler (registered here in ``ssljax.data.samplers``) clusters
the training set with k-means on encoder features and draws batches whose images have distinct pseudo-labels; the
loss is NT-Xent.
"""

from __future__ import annotations

import dataclasses
import hashlib

import numpy as np

from ssljax.config_lib import ConfigError
from ssljax.data import samplers
from ssljax.objectives import losses
from ssljax.objectives.base import TwoViewObjective, check_temperature, register

BATCHINGS = ('distinct', 'reference')
NETWORKS = ('', 'online', 'target', 'teacher')


@register
@dataclasses.dataclass(frozen=True)
class GSimCLR(TwoViewObjective):
    """G-SimCLR's loss: NT-Xent over the global batch averaged over the 2B anchors (losses.nt_xent_mean; the SimCLR
    paper's normalisation, which G-SimCLR's paper and notebook use), with z = g(f(x)):
        L = (1/2B) sum_i -log( exp(s(z_i, z_j(i)) / tau) / sum_{k != i} exp(s(z_i, z_k) / tau) )
    Pair it with ``sampler.name = 'gsimclr'`` (:class:`PseudoLabelSampler`): that is what makes it G-SimCLR (with
    ``epoch_shuffle`` it is SimCLR). Defaults (the config keys): the authors' CIFAR-10 notebook (ariG23498/G-SimCLR
    CIFAR10/SimCLR_Pseudo_Labels): temperature 0.1, projector 256-128-50 without BN (projector_hidden (256, 128),
    projector_dim 50, projector_bn False), each view through the network on its own (bn_per_view True).
    """

    name = 'gsimclr'
    temperature: float = 0.1
    projector_hidden: tuple = (256, 128)
    projector_dim: int = 50
    projector_bn: bool = False
    bn_per_view: bool = True

    @classmethod
    def check_config(cls, config, num_devices: int) -> None:
        check_temperature(cls.config_values(config))

    def pair_loss(self, z_a, z_b):
        return losses.nt_xent_mean(z_a, z_b, self.temperature), {
            'pos_cosine': losses.cosine_similarity(z_a, z_b).mean()
        }


@samplers.register_sampler
class PseudoLabelSampler(samplers.Sampler):
    """Batches in which no two images share a k-means pseudo-label (G-SimCLR), re-clustered on a schedule.

    State: ``pseudo`` int32 [N], the cluster of each training image. ``refresh`` (before step 0, then every
    ``refresh_epochs`` epochs; 0: only before step 0, so the labels come from the initial encoder and stay frozen)
    runs k-means (scikit-learn, k-means++, one start, seeded by (seed, step)) with k = ``num_clusters`` (0: the
    global batch B, as the paper) on the L2-normalised eval-view features of ``network`` ('' = the method's
    default) for the whole training set. The paper clusters a denoising autoencoder's latents once; a frozen
    encoder is ``refresh_epochs=0``.

    ``batching``:
    - 'distinct' (default, the paper's rule): step t takes B distinct clusters (all of them when k = B; else B drawn
      with default_rng([seed, t])) and one image from each: the member at position t mod |c| of a permutation of
      cluster c drawn with default_rng([seed, c, t // |c|]), so with k = B each image of c is used once every |c|
      steps. When fewer than B clusters are non-empty, every non-empty cluster gives one image and the rest are
      drawn without replacement from the other images (the only case where labels repeat).
    - 'reference': ariG23498/G-SimCLR's notebook: images ordered by (rank of the image within its cluster, cluster),
      cut into N // B consecutive batches, the same order every epoch (labels can repeat where a batch spans two
      ranks).
    Every host computes the same indices: a pure function of (seed, step, pseudo).
    """

    name = 'gsimclr'

    def __init__(self, settings, num_examples, global_batch, seed):
        super().__init__(settings, num_examples, global_batch, seed)
        get = settings.get if hasattr(settings, 'get') else (lambda key, default: default)
        self.batching = get('batching', 'distinct')
        self.num_clusters = int(get('num_clusters', 0)) or self.global_batch
        self.refresh_epochs = float(get('refresh_epochs', 1.0))
        self.network = get('network', '')
        if self.batching not in BATCHINGS:
            raise ConfigError(
                f'config key "sampler.batching": unknown batching {self.batching!r}; known: {", ".join(BATCHINGS)}'
            )
        if self.network not in NETWORKS:
            raise ConfigError(
                f'config key "sampler.network": unknown network {self.network!r}; known: '
                f'{", ".join(repr(n) for n in NETWORKS)}'
            )
        if self.refresh_epochs < 0:
            raise ConfigError(f'config key "sampler.refresh_epochs" must be >= 0, got {self.refresh_epochs}')
        if self.num_clusters > self.num_examples:
            raise ConfigError(
                f'config key "sampler.num_clusters" ({self.num_clusters}) is larger than the training '
                f'set ({self.num_examples} images)'
            )
        if self.batching == 'distinct' and self.num_clusters < self.global_batch:
            raise ConfigError(
                f'config key "sampler.num_clusters" ({self.num_clusters}) must be >= batch_size '
                f'({self.global_batch}) for batches without two images of one pseudo-label (0: the '
                f'batch size)'
            )
        self.period = 0 if self.refresh_epochs == 0 else max(1, int(round(self.refresh_epochs * self.steps_per_epoch)))
        self._groups_key, self._groups = None, None

    def init_state(self):
        return {'pseudo': (np.arange(self.num_examples) % self.num_clusters).astype(np.int32)}

    def refresh_steps(self, step):
        return step == 0 or (self.period > 0 and step % self.period == 0)

    def refresh(self, step, state, tools):
        from sklearn.cluster import KMeans

        feats = np.asarray(tools.train_features(self.network), np.float64)
        feats /= np.maximum(np.linalg.norm(feats, axis=1, keepdims=True), 1e-12)
        seed = int(np.random.default_rng([self.seed, step]).integers(2**31 - 1))
        kmeans = KMeans(n_clusters=self.num_clusters, n_init=1, random_state=seed).fit(feats)
        return {'pseudo': np.asarray(kmeans.labels_, np.int32)}

    def _clusters(self, pseudo: np.ndarray) -> tuple:
        """(non-empty cluster ids, sorted; each one's members, ascending; the 'reference' order), cached per labels."""
        key = hashlib.blake2b(np.ascontiguousarray(pseudo).tobytes(), digest_size=16).digest()
        if key != self._groups_key:
            order = np.argsort(pseudo, kind='stable')
            ids, starts = np.unique(pseudo[order], return_index=True)
            members = np.split(order, starts[1:])
            rank = np.empty(len(pseudo), np.int64)
            for group in members:
                rank[group] = np.arange(len(group))
            # 'reference' order: by rank within the cluster, then by cluster
            self._groups_key, self._groups = key, (ids, members, np.lexsort((pseudo, rank)))
        return self._groups

    def indices(self, step, state):
        pseudo = np.asarray(state['pseudo'])
        ids, members, reference_order = self._clusters(pseudo)
        batch = self.global_batch
        if self.batching == 'reference':
            j = step % self.steps_per_epoch
            return reference_order[j * batch : (j + 1) * batch].astype(np.int64)
        rng = np.random.default_rng([self.seed, step])
        take = rng.permutation(len(ids)) if len(ids) <= batch else rng.choice(len(ids), batch, replace=False)
        picked = []
        for c in take:
            group = members[c]
            perm = np.random.default_rng([self.seed, int(ids[c]), step // len(group)]).permutation(len(group))
            picked.append(group[perm[step % len(group)]])
        picked = np.asarray(picked, np.int64)
        if len(picked) < batch:  # fewer non-empty clusters than B (a collapsed encoder): fill from the other images
            rest = np.setdiff1d(np.arange(len(pseudo)), picked)
            picked = np.concatenate([picked, rng.choice(rest, batch - len(picked), replace=False)])
        return picked
