"""Evaluation of frozen representations: kNN monitor, linear probes, diagnostics, feature extraction, and the
evaluators chosen by name in ``config.evals`` with their runner.

The framework (registry, `Evaluator`, `validate_evals`, `EvalRunner`) is framework.py; importing this package
registers the evaluator types: builtin.py (knn, online_probe, linear, clustering, diagnostics), analysis.py
(part_probe, layer_probe, few_label), finetune.py and reconstruction.py. Plug-ins register their own with
``from ssljax.evaluation import Evaluator, register_evaluator``.
"""

from ssljax.evaluation.context import EvalContext, Features, make_context
from ssljax.evaluation.diagnostics import (
    alignment,
    clustering_metrics,
    eigen_alignment,
    feature_std,
    kmeans_cluster_eval,
    rankme,
    uniformity,
)
from ssljax.evaluation.framework import (
    COMMON_SETTINGS,
    EVALUATORS,
    NETWORKS,
    EvalRunner,
    Evaluator,
    make_runner,
    register_evaluator,
    settings_of,
    validate_evals,
)

# Registers the evaluator types: the standard ones, then the analysis ones (part_probe, layer_probe, few_label).
from ssljax.evaluation import builtin  # noqa: F401,E402  (register knn, online_probe, linear, clustering, diagnostics)
from ssljax.evaluation.analysis import balanced_subset, layer_features, part_boxes
from ssljax.evaluation.features import extract_features
from ssljax.evaluation import finetune, reconstruction  # noqa: F401,E402  (register 'finetune', 'reconstruction')
from ssljax.evaluation.knn import knn_predict, knn_predict_sharded, knn_top1
from ssljax.evaluation.linear_probe import online_probe_init, online_probe_loss, train_linear_probe

__all__ = [
    "COMMON_SETTINGS",
    "EVALUATORS",
    "EvalContext",
    "EvalRunner",
    "Evaluator",
    "Features",
    "NETWORKS",
    "alignment",
    "clustering_metrics",
    "eigen_alignment",
    "extract_features",
    "feature_std",
    "kmeans_cluster_eval",
    "knn_predict",
    "knn_predict_sharded",
    "knn_top1",
    "make_context",
    "make_runner",
    "online_probe_init",
    "online_probe_loss",
    "rankme",
    "register_evaluator",
    "settings_of",
    "train_linear_probe",
    "uniformity",
    "validate_evals",
    "balanced_subset",
    "layer_features",
    "part_boxes",
]
