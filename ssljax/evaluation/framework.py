"""The evaluator framework: the registry of evaluator types, their base class, the checks of ``config.evals`` and
the runner (big_vision style). The evaluator types themselves live in their own modules (builtin.py: knn,
online_probe, linear, clustering, diagnostics; analysis.py, finetune.py, reconstruction.py), which register
themselves when ``ssljax.evaluation`` is imported; this module imports none of them.

``config.evals.<name>`` holds ``type`` (a key of `EVALUATORS`), ``every`` (period in train steps; 0: only at the
end; -1: ``config.eval_every``), ``network`` ('' = the objective's ``eval_network``, or 'online' / 'target' /
'teacher') and the type's own settings (its class's ``defaults``). An evaluator is built as
``cls(settings, ctx, name)`` and ``run(state, step)`` returns named floats; `EvalRunner` prefixes them with the
evaluator's name. New types register with ``@register_evaluator`` from anywhere (a test, a plug-in module):

    from ssljax.evaluation import Evaluator, register_evaluator

Validation happens once per run: `validate_evals` (called by ``ssljax.configure.validate``, before any data is read)
checks every setting and raises a ``ConfigError`` naming the key (``config key "evals.NAME.KEY" ...``). The train
loop's setup then builds its runner with ``validated=True``, which only fills in the defaults (`settings_of`);
a runner built by hand (``EvalRunner(ctx)`` or `make_runner`, in a notebook or a test) validates first.

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
from typing import Callable, ClassVar, Sequence

import jax
import ml_collections
import numpy as np

from ssljax.config_lib import ConfigError, type_words
from ssljax.evaluation.context import EvalContext, make_context, to_host

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

    ``check(settings)`` may reject bad values; it returns ``(key, message)`` for the first bad one or None
    (`validate_evals` turns it into a ConfigError naming ``evals.<name>.<key>``).
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
        """The encoder variables of this evaluator's ``network`` in ``state``; a network the state does not have is
        a ConfigError naming ``evals.<name>.network``."""
        try:
            return self.ctx.encoder_variables(state, self.network)
        except ValueError as e:
            raise ConfigError(f'config key "evals.{self.name}.network": {e}') from None

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


# ------------------------------------------------------------------------------------------- settings, validation


def settings_of(name: str, given):
    """The full settings of ``evals.<name>``: common and type defaults updated by ``given``. No checks: ``given``
    must have passed `validate_evals` (an unknown type is a KeyError here)."""
    cls = EVALUATORS[given['type']]
    merged = ml_collections.ConfigDict({**COMMON_SETTINGS, **cls.defaults})
    for key, value in given.items():
        merged[key] = value
    return merged


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


def _evals_group(config):
    """``config.evals``, or a ConfigError when the config has none."""
    evals = config.get('evals', None)
    if evals is None:
        raise ConfigError('config has no "evals" group (evaluators by name)')
    return evals


def validate_evals(config) -> None:
    """Checks ``config.evals`` and ``config.eval.baseline_evals``; raises ConfigError (a ValueError) naming the key.

    Every ``evals.<name>`` needs a known ``type``; its keys must be ``type``, ``every`` (int >= -1), ``network``
    (one of '', 'online', 'target', 'teacher') or a setting of that type, each of the default's type, and pass the
    type's ``check``. Called once per run by ``ssljax.configure.validate``; `EvalRunner` calls it only when built
    without ``validated=True``.
    """
    evals = _evals_group(config)
    for name, given in evals.items():
        key = f'evals.{name}'
        if not hasattr(given, 'items'):
            raise ConfigError(f'config key "{key}" must be a group with a "type", got {given!r}')
        kind = given.get('type', None)
        if not isinstance(kind, str) or kind not in EVALUATORS:
            raise ConfigError(
                f'config key "{key}.type": unknown evaluator type {kind!r}; known: {", ".join(sorted(EVALUATORS))}'
            )
        cls = EVALUATORS[kind]
        allowed = {**COMMON_SETTINGS, **cls.defaults}
        for setting, value in given.items():
            if setting not in allowed:
                raise ConfigError(
                    f'config key "{key}.{setting}" is not a setting of evaluator type {kind!r}; '
                    f'its settings: {", ".join(sorted(allowed))}'
                )
            if not _type_ok(value, allowed[setting]):
                raise ConfigError(
                    f'config key "{key}.{setting}" expects {type_words(allowed[setting])} '
                    f'(e.g. {allowed[setting]!r}), got {value!r}'
                )
        settings = settings_of(name, given)
        if settings.every < -1:
            raise ConfigError(
                f'config key "{key}.every" must be >= 0 (0: only at the end) or -1 (eval_every), got {settings.every}'
            )
        if settings.network not in NETWORKS:
            raise ConfigError(
                f'config key "{key}.network": unknown network {settings.network!r}; known: '
                f'{", ".join(repr(n) for n in NETWORKS)}'
            )
        bad = cls.check(settings)
        if bad is not None:
            raise ConfigError(f'config key "{key}.{bad[0]}" {bad[1]}')
    baseline = (
        tuple(config.eval.get('baseline_evals', ()) or ()) if config.eval.get('random_init_baseline', True) else ()
    )  # without the baseline its evaluators need not exist
    unknown = [n for n in baseline if n not in evals]
    if unknown:
        raise ConfigError(
            f'config key "eval.baseline_evals" names {", ".join(map(repr, unknown))}, which '
            f'config.evals does not define; defined: {", ".join(evals)}'
        )


# ------------------------------------------------------------------------------------------------------ the runner


class EvalRunner:
    """The evaluators of ``ctx.config.evals`` (or those in ``names``), each with its period.

    ``every`` of an evaluator: its own ``every`` when >= 0, else ``config.eval_every``; 0 means only in the final
    run. ``timings`` holds the seconds each evaluator of the last run took (the first to need a (network, split)
    also pays for encoding it).

    ``validated``: True when ``ctx.config`` has already passed `validate_evals` (``ssljax.configure.validate`` calls
    it; the train loop's setup builds its runner right after), so the runner only fills in the defaults
    (`settings_of`) and checks nothing again. False (the default, for a runner built by hand in a notebook or a
    test): `validate_evals` runs first, so a bad evaluator config is a ConfigError naming its key.
    """

    def __init__(self, ctx: EvalContext, names: Sequence[str] | None = None, validated: bool = False):
        config = ctx.config
        if not validated:
            validate_evals(config)
        evals = _evals_group(config)
        unknown = [n for n in (names or ()) if n not in evals]
        if unknown:
            raise ValueError(f'unknown evaluator(s) {", ".join(unknown)}; config.evals has: {", ".join(evals)}')
        self.ctx = ctx
        self.evaluators: dict[str, Evaluator] = {}
        self.every: dict[str, int] = {}
        for name, given in evals.items():
            if names is not None and name not in names:
                continue
            settings = settings_of(name, given)
            self.evaluators[name] = EVALUATORS[settings.type](settings, ctx, name)
            self.every[name] = settings.every if settings.every >= 0 else int(config.eval_every)
        self.timings: dict[str, float] = {}
        self.log: Callable[[str], None] | None = None  # one line per evaluator run (the train loop sets it)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self.evaluators)

    def due(self, step: int) -> tuple[str, ...]:
        """The evaluators whose period divides ``step`` (period > 0)."""
        return tuple(n for n, every in self.every.items() if every > 0 and step % every == 0)

    def check_networks(self, state) -> None:
        """Raises ConfigError naming ``evals.<name>.network`` when an evaluator's network is not in ``state``."""
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
        todo = [name for name in self.names if name in names]
        try:
            for i, name in enumerate(todo):
                start = time.time()
                values = {
                    f'{name}_{key}': float(value) for key, value in self.evaluators[name].run(state, int(step)).items()
                }
                results.update(values)
                self.timings[name] = time.time() - start
                if self.log is not None:
                    shown = ', '.join(f'{k} {v:.4g}' for k, v in list(values.items())[:4])
                    more = f' (+{len(values) - 4} more)' if len(values) > 4 else ''
                    self.log(
                        f'eval {i + 1}/{len(todo)} @ step {step}: {name} {self.timings[name]:.1f} s'
                        f'{": " + shown + more if shown else ""}'
                    )
        finally:
            self.ctx.clear_cache()
        return results

    def train_features(self, state, network: str = '', source=None) -> np.ndarray:
        """float32 numpy [N, D]: eval-view features of every image of ``source`` (default: the kNN bank split), e.g.
        the whole training set for a sampler's refresh. ``source``: a Split or any source with ``get(indices)``."""
        ctx = self.ctx
        source = ctx.train if source is None else source
        values = ctx.encode(ctx.encoder_variables(state, network), source, key=('source', id(source)))
        return to_host(values).reshape(-1, values.shape[-1])[: len(source)]


def make_runner(
    config, exp, train_split, test_split, workdir: str = '', names: Sequence[str] | None = None, validated: bool = False
) -> EvalRunner:
    """`EvalRunner` over `make_context(config, exp, train_split, test_split, workdir)`; ``validated`` as there
    (False: ``config.evals`` is checked first)."""
    return EvalRunner(make_context(config, exp, train_split, test_split, workdir), names, validated=validated)
