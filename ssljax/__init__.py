"""ssljax: self-supervised pretraining of image encoders in JAX/Flax.

The top-level API (each name is imported on first use, so ``import ssljax`` stays cheap and imports no JAX):

    config = ssljax.load_config('simclr', ['total_steps=100'])   # a method name or config file, KEY=VALUE overrides
    summary = ssljax.train_and_evaluate(config, 'workdirs/run')    # trains, evaluates, writes summary.json
    scores = ssljax.evaluate('workdirs/run')                       # a saved checkpoint, the run's evaluators
    module, variables = ssljax.load_encoder('workdirs/run/export') # an exported encoder (ssljax export)
    @ssljax.register_objective                                     # a new method, on ssljax.TwoViewObjective, ...

The package is layered; a module imports only from its own layer or a lower one (function-level imports included),
as the import-linter contracts in pyproject.toml check (``lint-imports``). Lowest first:

1. ``parallel``, ``logging_lib``, ``preemption``, ``checkpoint``: device mesh and shardings, feedback, signals, orbax.
2. ``config_lib`` (a leaf: ConfigError, loading, overrides, ranges), ``optim``, ``models`` (encoders, heads, registry).
3. ``data``: sources (a package by job), views and masks (``data.views``), samplers, host pipeline and streaming,
   on-device augmentation.
4. ``evaluation``: the evaluator framework, then the evaluators (kNN, probes, clustering, diagnostics, fine-tuning).
5. ``objectives``: the contract and shared helpers (``base``, ``ema``), pure losses (``losses``), one file per method.
6. ``configure`` (validation over the registries, before any data is read), ``workdir`` (lock, remembered config).
7. ``train``: ``train_and_evaluate(config, workdir)``, the one generic loop; it knows no method.
8. The entry points: ``cli`` (shared argument parsing, one-line errors), ``main``, ``evaluate``, ``export``, ``plot``,
   ``cka``, ``reproduce``, ``bench``, and ``commands`` (the one ``ssljax`` command over all of them).

The names below resolve lazily through the module's ``__getattr__`` (PEP 562): the package root itself imports
nothing of the package, so the layers above hold.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any, Sequence

__version__ = "0.1.0"

if TYPE_CHECKING:  # for type checkers and IDEs; at run time the names resolve lazily below
    import ml_collections

    from ssljax.objectives import EMATwoViewObjective, Forward, LossOutput, Objective, TwoViewObjective
    from ssljax.objectives import register as register_objective


def load_config(spec: str, overrides: Sequence[str] = ()) -> ml_collections.ConfigDict:
    """A run's config: ``spec`` is a method name (``'simclr'``), a config file (``'configs/simclr.py'``), either with
    variant arguments after a colon (``'simclr:dataset=cifar10'``); ``overrides`` are ``KEY=VALUE`` strings as on
    the command line without ``--config.`` (``['total_steps=100', 'evals=none']``).

    Checked as the command line checks it: an unknown key, a value of the wrong type or a file that does not exist
    is a :class:`ssljax.config_lib.ConfigError` naming it (ranges and registries are checked when the run starts).
    """
    from ssljax import configure

    return configure.load_config_with_overrides(spec, list(overrides))


def train_and_evaluate(config: Any, workdir: str, **kwargs: Any) -> dict:
    """Pretrains ``config.method`` into ``workdir`` and evaluates the encoder -> the dict written to
    ``workdir/summary.json``. Rerunning on the same workdir resumes from its latest checkpoint. ``kwargs``: ``hooks``
    (``ssljax.train.Hook`` instances), ``allow_config_changes`` (see :func:`ssljax.train.train_and_evaluate`)."""
    from ssljax import train

    return train.train_and_evaluate(config, workdir, **kwargs)


_LAZY = {
    # name: (module, attribute; None: the module itself)
    'evaluate': ('ssljax.evaluate', None),  # a callable module: ssljax.evaluate(workdir, step=None, only=None)
    'load_encoder': ('ssljax.export', 'load_encoder'),
    'export_encoder': ('ssljax.export', 'export_encoder'),
    'register_objective': ('ssljax.objectives', 'register'),
    'Objective': ('ssljax.objectives', 'Objective'),
    'TwoViewObjective': ('ssljax.objectives', 'TwoViewObjective'),
    'EMATwoViewObjective': ('ssljax.objectives', 'EMATwoViewObjective'),
    'Forward': ('ssljax.objectives', 'Forward'),
    'LossOutput': ('ssljax.objectives', 'LossOutput'),
    'losses': ('ssljax.objectives.losses', None),
    'ConfigError': ('ssljax.config_lib', 'ConfigError'),
}

__all__ = ['__version__', 'load_config', 'train_and_evaluate', *_LAZY]


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
    module_name, attribute = _LAZY[name]
    module = importlib.import_module(module_name)
    return module if attribute is None else getattr(module, attribute)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
