"""ssljax: self-supervised pretraining of image encoders in JAX/Flax.

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
   ``cka``, ``reproduce``, ``bench``.
"""

__version__ = "0.1.0"
