"""Evaluators chosen by name in the config (big_vision style).

``config.evals.<name>`` holds ``type`` (a key of `EVALUATORS`), ``every`` (period in train steps; 0: only at the
end; -1: ``config.eval_every``), ``network`` ('' = the objective's ``eval_network``, or 'online' / 'target' /
'teacher') and the type's own settings (its class's ``defaults``). An evaluator is built as
``cls(settings, ctx, name)`` and ``run(state, step)`` returns named floats; `EvalRunner` prefixes them with the
evaluator's name. New types register with ``@register_evaluator`` from anywhere (a test, a plug-in module).

    runner = EvalRunner(make_context(config, exp, train_split, test_split, workdir))
    if runner.due(step): results = runner.run(state, step)        # during training: the evaluators due at step
    final = runner.run(state, step, final=True)                    # at the end: every evaluator
    baseline = runner.run(state, 0, names=config.eval.baseline_evals)   # the random-init baseline

Results are flat: evaluator ``name``'s value ``key`` is ``f'{name}_{key}'`` (knn_top1, linear_top1,
online_probe_top1, clustering_nmi, diagnostics_rankme, ...). The features of a (network, split) are encoded once per
``run`` and shared by its evaluators.
"""
from __future__ import annotations

import os
import time
from typing import ClassVar, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from ssljax.config_lib import ConfigError
from ssljax.evaluation import diagnostics, knn, linear_probe
from ssljax.evaluation.context import EvalContext, make_context, to_host  # noqa: F401 (re-exported)

# Settings every evaluator has, with their defaults.
COMMON_SETTINGS = dict(type='', every=-1, network='')
NETWORKS = ('', 'online', 'target', 'teacher')

EVALUATORS: dict[str, type['Evaluator']] = {}


def register_evaluator(cls_or_type):
    """Class decorator registering an evaluator under its ``type`` (``@register_evaluator``), or under the given
    name (``@register_evaluator('my_eval')``)."""
    def add(cls, name):
        if not name:
            raise ValueError(f'evaluator class {cls.__name__} has no type name')
        cls.type = name
        EVALUATORS[name] = cls
        return cls

    if isinstance(cls_or_type, str):
        return lambda cls: add(cls, cls_or_type)
    return add(cls_or_type, cls_or_type.type)


class Evaluator:
    """Base class: ``defaults`` are the type's own settings; ``run(state, step) -> {name: float}``.

    ``check(settings)`` may reject bad values; it returns ``(key, message)`` for the first bad one or None.
    """
    type: ClassVar[str] = ''
    defaults: ClassVar[dict] = {}

    def __init__(self, settings, ctx: EvalContext, name: str = ''):
        self.settings, self.ctx, self.name = settings, ctx, name or self.type
        self.network = settings.get('network', '')

    @classmethod
    def check(cls, settings) -> tuple[str, str] | None:
        return None

    def run(self, state, step: int) -> dict[str, float]:
        raise NotImplementedError

    def variables(self, state) -> dict:
        try:
            return self.ctx.encoder_variables(state, self.network)
        except ValueError as e:
            raise ValueError(f'config key "evals.{self.name}.network": {e}') from None

    def features(self, state, split: str):
        self.variables(state)  # a bad network name fails here, naming the config key
        return self.ctx.features(state, self.network, split)

    def figure_path(self, what: str, step: int) -> str | None:
        """``workdir/figures/<name>_<what>_<step>.png`` (directory created), or None without a workdir / off
        process 0."""
        if not self.ctx.workdir or jax.process_index() != 0:
            return None
        directory = os.path.join(self.ctx.workdir, 'figures')
        os.makedirs(directory, exist_ok=True)
        return os.path.join(directory, f'{self.name}_{what}_{int(step):07d}.png')


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
        preds = knn.knn_predict_sharded(train.values, train.device_labels(), test.flat(), self.ctx.num_classes,
                                        self.ctx.mesh, k=self.settings.k, temperature=self.settings.temperature,
                                        num_valid=train.count)
        preds = to_host(preds)[:test.count]
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
        preds = to_host(_probe_predict(state.probe_params, test.flat()))[:test.count]
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
            train.host()[keep], train.labels[keep], test.host(), test.labels, self.ctx.num_classes,
            epochs=self.settings.epochs, batch_size=self.settings.batch_size, lr=self.settings.lr, seed=self.ctx.seed)
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
            from ssljax.data import augment
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
        values = {'rankme': float(diagnostics.rankme(z)), 'alignment': float(diagnostics.alignment(za, zb)),
                  'uniformity': float(diagnostics.uniformity(z)), 'feature_std': float(diagnostics.feature_std(z))}
        self._plot_spectrum(sigma, values['rankme'], step)
        return values

    def _two_views(self, state, images):
        ctx = self.ctx
        views = tuple(ctx.views[:2]) if len(ctx.views) >= 2 else (ctx.views[0],) * 2
        if not hasattr(self, '_views_fn') or self._views != views:
            from ssljax.data import augment
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
        outputs = ctx.map_blocks(self._views_fn, self.variables(state), images,
                                 extra=lambda j: jax.random.fold_in(key, j))
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


def settings_of(name: str, given):
    """The full settings of ``evals.<name>``: common and type defaults updated by ``given`` (validated first)."""
    import ml_collections
    cls = EVALUATORS[given['type']]
    merged = ml_collections.ConfigDict({**COMMON_SETTINGS, **cls.defaults})
    for key, value in given.items():
        merged[key] = value
    return merged


# ---------------------------------------------------------------------------------------- validation, the runner

def _type_ok(value, default) -> bool:
    if isinstance(default, bool):
        return isinstance(value, bool)
    if isinstance(default, int):
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(default, float):
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if isinstance(default, (tuple, list)):
        return isinstance(value, (tuple, list))
    return isinstance(value, type(default))


def validate_evals(config) -> None:
    """Checks ``config.evals`` and ``config.eval.baseline_evals``; raises ConfigError (a ValueError) naming the key.

    Every ``evals.<name>`` needs a known ``type``; its keys must be ``type``, ``every`` (int >= -1), ``network``
    (one of '', 'online', 'target', 'teacher') or a setting of that type, each of the default's type.
    """
    evals = config.get('evals', None)
    if evals is None:
        raise ConfigError('config has no "evals" group (evaluators by name)')
    for name, given in evals.items():
        key = f'evals.{name}'
        if not hasattr(given, 'items'):
            raise ConfigError(f'config key "{key}" must be a group with a "type", got {given!r}')
        kind = given.get('type', None)
        if kind not in EVALUATORS:
            raise ConfigError(f'config key "{key}.type": unknown evaluator type {kind!r}; known: '
                              f'{", ".join(sorted(EVALUATORS))}')
        cls = EVALUATORS[kind]
        allowed = {**COMMON_SETTINGS, **cls.defaults}
        for setting, value in given.items():
            if setting not in allowed:
                raise ConfigError(f'config key "{key}.{setting}" is not a setting of evaluator type {kind!r}; '
                                  f'its settings: {", ".join(sorted(allowed))}')
            if not _type_ok(value, allowed[setting]):
                raise ConfigError(f'config key "{key}.{setting}" expects a {type(allowed[setting]).__name__} '
                                  f'(e.g. {allowed[setting]!r}), got {value!r}')
        settings = settings_of(name, given)
        if settings.every < -1:
            raise ConfigError(f'config key "{key}.every" must be >= 0 (0: only at the end) or -1 (eval_every), '
                              f'got {settings.every}')
        if settings.network not in NETWORKS:
            raise ConfigError(f'config key "{key}.network": unknown network {settings.network!r}; known: '
                              f'{", ".join(repr(n) for n in NETWORKS)}')
        bad = cls.check(settings)
        if bad is not None:
            raise ConfigError(f'config key "{key}.{bad[0]}" {bad[1]}')
    baseline = tuple(config.eval.get('baseline_evals', ()) or ()) if config.eval.get('random_init_baseline', True) \
        else ()  # without the baseline its evaluators need not exist
    unknown = [n for n in baseline if n not in evals]
    if unknown:
        raise ConfigError(f'config key "eval.baseline_evals" names {", ".join(map(repr, unknown))}, which '
                          f'config.evals does not define; defined: {", ".join(evals)}')


class EvalRunner:
    """The evaluators of ``ctx.config.evals`` (or those in ``names``), each with its period.

    ``every`` of an evaluator: its own ``every`` when >= 0, else ``config.eval_every``; 0 means only in the final
    run. ``timings`` holds the seconds each evaluator of the last run took (the first to need a (network, split)
    also pays for encoding it).
    """

    def __init__(self, ctx: EvalContext, names: Sequence[str] | None = None):
        config = ctx.config
        validate_evals(config)
        unknown = [n for n in (names or ()) if n not in config.evals]
        if unknown:
            raise ValueError(f'unknown evaluator(s) {", ".join(unknown)}; config.evals has: {", ".join(config.evals)}')
        self.ctx = ctx
        self.evaluators: dict[str, Evaluator] = {}
        self.every: dict[str, int] = {}
        for name, given in config.evals.items():
            if names is not None and name not in names:
                continue
            settings = settings_of(name, given)
            self.evaluators[name] = EVALUATORS[settings.type](settings, ctx, name)
            self.every[name] = settings.every if settings.every >= 0 else int(config.eval_every)
        self.timings: dict[str, float] = {}

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self.evaluators)

    def due(self, step: int) -> tuple[str, ...]:
        """The evaluators whose period divides ``step`` (period > 0)."""
        return tuple(n for n, every in self.every.items() if every > 0 and step % every == 0)

    def check_networks(self, state) -> None:
        """Raises ValueError naming ``evals.<name>.network`` when an evaluator's network is not in ``state``."""
        for evaluator in self.evaluators.values():
            evaluator.variables(state)

    def run(self, state, step: int, names: Sequence[str] | None = None, final: bool = False) -> dict[str, float]:
        """Runs evaluators on ``state`` -> {f'{name}_{key}': float}: those in ``names`` when given, else every one
        when ``final``, else those due at ``step`` ({} when none is)."""
        if names is None:
            names = self.names if final else self.due(step)
        names = tuple(names)
        unknown = [n for n in names if n not in self.evaluators]
        if unknown:
            raise ValueError(f'unknown evaluator(s) {", ".join(unknown)}; this runner has: {", ".join(self.names)}')
        results: dict[str, float] = {}
        self.timings = {}
        self.ctx.clear_cache()
        try:
            for name in self.names:
                if name not in names:
                    continue
                start = time.time()
                for key, value in self.evaluators[name].run(state, int(step)).items():
                    results[f'{name}_{key}'] = float(value)
                self.timings[name] = time.time() - start
        finally:
            self.ctx.clear_cache()
        return results

    def train_features(self, state, network: str = '', source=None) -> np.ndarray:
        """float32 numpy [N, D]: eval-view features of every image of ``source`` (default: the kNN bank split), e.g.
        the whole training set for a sampler's refresh. ``source``: a Split or any source with ``get(indices)``."""
        ctx = self.ctx
        source = ctx.train if source is None else source
        values = ctx.encode(ctx.encoder_variables(state, network), source, key=('source', id(source)))
        return to_host(values).reshape(-1, values.shape[-1])[:len(source)]


def make_runner(config, exp, train_split, test_split, workdir: str = '',
                names: Sequence[str] | None = None) -> EvalRunner:
    """`EvalRunner` over `make_context(config, exp, train_split, test_split, workdir)`."""
    return EvalRunner(make_context(config, exp, train_split, test_split, workdir), names)
