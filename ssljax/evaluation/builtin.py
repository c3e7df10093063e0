"""The built-in evaluator types: ``knn``, ``online_probe``, ``linear``, ``clustering`` and ``diagnostics``.

Each registers itself with `framework.register_evaluator` when ``ssljax.evaluation`` is imported (the framework
does not import this module). ``config.evals.<name>.type`` picks one; its class's ``defaults`` are its settings and
``check`` rejects bad values (a ConfigError naming ``evals.<name>.<key>``, raised by `framework.validate_evals`).
`diagnostics_rows` is shared with ``ssljax.plot`` (the test rows the ``diagnostics`` evaluator scores).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from ssljax.data import augment
from ssljax.evaluation import diagnostics, knn, linear_probe
from ssljax.evaluation.context import to_host
from ssljax.evaluation.framework import Evaluator, register_evaluator


def _positive(settings, *keys) -> tuple[str, str] | None:
    for key in keys:
        if not settings[key] > 0:
            return key, f'must be > 0, got {settings[key]!r}'
    return None


@register_evaluator
class KNN(Evaluator):
    """Weighted kNN top-1 (`knn.knn_predict`): votes_q[c] = sum_{i in topk(s_q.)} exp(s_qi / T) [y_i = c] over the
    train features as bank, pred_q = argmax_c votes_q[c]; top1 = mean_q [pred_q = y_q] on the test split. The bank
    stays sharded over the devices (`knn.knn_predict_sharded`)."""

    type = 'knn'
    defaults = dict(k=200, temperature=0.1)

    @classmethod
    def check(cls, settings):
        return _positive(settings, 'k', 'temperature')

    def run(self, state, step):
        train, test = self.features(state, 'train'), self.features(state, 'test')
        preds = knn.knn_predict_sharded(
            train.values,
            train.device_labels(),
            test.flat(),
            self.ctx.num_classes,
            self.ctx.mesh,
            k=self.settings.k,
            temperature=self.settings.temperature,
            num_valid=train.count,
        )
        preds = to_host(preds)[: test.count]
        return {'top1': float(np.mean(preds == test.labels))}


@jax.jit
def _probe_predict(probe, features):
    return jnp.argmax(features @ probe['kernel'] + probe['bias'], axis=-1)


@register_evaluator
class OnlineProbe(Evaluator):
    """Test top-1 of the online probe trained inside the train step: pred = argmax(z W + b) with
    ``state.probe_params`` = {'kernel': W, 'bias': b} on the evaluated test features z."""

    type = 'online_probe'
    defaults = {}

    def run(self, state, step):
        test = self.features(state, 'test')
        preds = to_host(_probe_predict(state.probe_params, test.flat()))[: test.count]
        return {'top1': float(np.mean(preds == test.labels))}


@register_evaluator
class Linear(Evaluator):
    """Offline linear probe on frozen features (`linear_probe.train_linear_probe`: standardised features, SGD +
    momentum, cosine schedule, lr x batch_size / 256); top1 on the test split.

    Its initialisation and shuffles come from ``config.seed`` alone, so the same features give the same top1 at the
    end of training and in ``python -m ssljax.evaluate``. Unlabeled train examples (label < 0) are left out.
    """

    type = 'linear'
    defaults = dict(epochs=100, lr=0.1, batch_size=256)

    @classmethod
    def check(cls, settings):
        return _positive(settings, 'epochs', 'lr', 'batch_size')

    def run(self, state, step):
        train, test = self.features(state, 'train'), self.features(state, 'test')
        keep = train.labels >= 0
        result = linear_probe.train_linear_probe(
            train.host()[keep],
            train.labels[keep],
            test.host(),
            test.labels,
            self.ctx.num_classes,
            epochs=self.settings.epochs,
            batch_size=self.settings.batch_size,
            lr=self.settings.lr,
            seed=self.ctx.seed,
        )
        return {'top1': float(result['top1'])}


@register_evaluator
class Clustering(Evaluator):
    """Clusters the test split and scores the clusters against its labels (`diagnostics.clustering_metrics`):

    nmi = I(T; P) / mean(H(T), H(P)) and ari (scikit-learn), acc = max over one-to-one maps m of
    mean_i [m(p_i) = t_i] (Hungarian matching, scipy). The clusters are k-means (scikit-learn, k-means++, 10
    restarts, seed ``config.seed``) on the L2-normalised features, with ``num_clusters`` (0: the number of classes).
    Hook: an objective with ``cluster_assignments(variables, images) -> int [B]`` (variables: the whole state's
    {'params', 'batch_stats'}; images: eval-view float32 [B, size, size, 3]) supplies its own assignments instead.
    """

    type = 'clustering'
    defaults = dict(num_clusters=0)

    @classmethod
    def check(cls, settings):
        if settings.num_clusters < 0:
            return 'num_clusters', f'must be >= 0 (0: the number of classes), got {settings.num_clusters}'
        return None

    def run(self, state, step):
        ctx = self.ctx
        assign = getattr(ctx.objective, 'cluster_assignments', None)
        if assign is not None:
            variables = {'params': state.params, 'batch_stats': state.batch_stats}
            outputs = ctx.map_blocks(self._assignments_fn(assign), variables, ctx.test.images, key='test')
            return diagnostics.clustering_metrics(ctx.test.labels, ctx.gather_rows(outputs, len(ctx.test.labels)))
        test = self.features(state, 'test')
        k = self.settings.num_clusters or ctx.num_classes
        return diagnostics.kmeans_cluster_eval(test.host(), test.labels, min(k, test.count), seed=ctx.seed)

    def _assignments_fn(self, assign):
        if not hasattr(self, '_assign_fn'):
            size, mean, std = self.ctx.eval_size, self.ctx.mean, self.ctx.std

            def fn(variables, images):
                return assign(variables, augment.eval_view(images, size, mean, std)).astype(jnp.int32)

            self._assign_fn = fn
        return self._assign_fn


def diagnostics_rows(n: int, max_examples: int, seed: int) -> np.ndarray:
    """The test rows ``diagnostics`` scores: all n, or a seeded sorted subset of ``max_examples`` (0: all)."""
    m = min(max_examples or n, n)
    return np.arange(n) if m == n else np.sort(np.random.default_rng(seed).choice(n, m, replace=False))


@register_evaluator
class Diagnostics(Evaluator):
    """Representation diagnostics on (a seeded subset of up to ``max_examples`` of) the test features z:

    rankme = exp(-sum_k p_k log p_k), p_k = sigma_k / sum_j sigma_j (+1e-7), sigma the singular values of z;
    alignment = mean_i ||n(z'_i) - n(z''_i)||^2 over two augmented views (the run's train views 0 and 1, seed
      ``config.seed``) of the same test images; uniformity = log mean_{i != j} exp(-2 ||n(z_i) - n(z_j)||^2);
    feature_std = mean_d std_i n(z)_{i,d} (about 1/sqrt(D) when spread out, 0 when collapsed); n(x) = x / ||x||.
    The spectrum sigma_k / sigma_1 is drawn to ``workdir/figures/<name>_spectrum_<step>.png``.
    """

    type = 'diagnostics'
    defaults = dict(max_examples=2048)

    @classmethod
    def check(cls, settings):
        if settings.max_examples < 0 or settings.max_examples == 1:
            return 'max_examples', f'must be 0 (all) or >= 2, got {settings.max_examples}'
        return None

    def run(self, state, step):
        ctx = self.ctx
        test = self.features(state, 'test')
        rows = diagnostics_rows(test.count, self.settings.max_examples, ctx.seed)
        z = test.host()[rows]
        za, zb = self._two_views(state, ctx.test.images[rows])
        sigma = np.linalg.svd(z.astype(np.float64), compute_uv=False)
        values = {
            'rankme': float(diagnostics.rankme(z)),
            'alignment': float(diagnostics.alignment(za, zb)),
            'uniformity': float(diagnostics.uniformity(z)),
            'feature_std': float(diagnostics.feature_std(z)),
        }
        self._plot_spectrum(sigma, values['rankme'], step)
        return values

    def _two_views(self, state, images):
        ctx = self.ctx
        views = tuple(ctx.views[:2]) if len(ctx.views) >= 2 else (ctx.views[0],) * 2
        if not hasattr(self, '_views_fn') or self._views != views:
            encoder = ctx.encoder

            def fn(variables, block, key):
                xa, xb = augment.augment_views(block, key, views)
                if xa.shape == xb.shape:
                    out = encoder.apply(variables, jnp.concatenate([xa, xb]), train=False)['pooled']
                    za, zb = jnp.split(out.astype(jnp.float32), 2)
                else:
                    za, zb = (encoder.apply(variables, x, train=False)['pooled'].astype(jnp.float32) for x in (xa, xb))
                return jnp.stack([za, zb], axis=1)  # [B, 2, D]: leading axis is the block's rows

            self._views_fn, self._views = fn, views
        key = jax.random.fold_in(jax.random.key(ctx.seed), 0x5EED)
        outputs = ctx.map_blocks(
            self._views_fn, self.variables(state), images, extra=lambda j: jax.random.fold_in(key, j)
        )
        pairs = ctx.gather_rows(outputs, images.shape[0])
        return pairs[:, 0], pairs[:, 1]

    def _plot_spectrum(self, sigma: np.ndarray, rankme: float, step: int) -> None:
        path = self.figure_path('spectrum', step)
        if path is None:
            return
        from matplotlib.figure import Figure  # not pyplot: a notebook's backend stays as it is

        fig = Figure(figsize=(5, 3.5))
        ax = fig.subplots()
        rel = sigma / max(sigma[0], 1e-30)
        ax.semilogy(np.arange(1, rel.size + 1), np.maximum(rel, 1e-12))
        ax.set_xlabel('index k')
        ax.set_ylabel('sigma_k / sigma_1')
        ax.set_title(f'{self.name}: embedding spectrum at step {step} (RankMe {rankme:.1f})', fontsize=9)
        ax.grid(True, which='both', alpha=0.3)
        fig.tight_layout()
        fig.savefig(path, dpi=100)
