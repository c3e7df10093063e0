"""Evaluation of frozen representations: kNN monitor, linear probes, diagnostics, feature extraction, and the
evaluators chosen by name in ``config.evals`` with their runner."""

from ssljax.evaluation.context import EvalContext, Features, make_context
from ssljax.evaluation.diagnostics import (alignment, clustering_metrics, eigen_alignment, feature_std,
                                           kmeans_cluster_eval, rankme, uniformity)
from ssljax.evaluation.evaluators import (EVALUATORS, EvalRunner, Evaluator, make_runner, register_evaluator,
                                          validate_evals)
# Registers the analysis evaluators (part_probe, layer_probe, few_label) next to the standard ones.
from ssljax.evaluation.analysis import balanced_subset, layer_features, part_boxes
from ssljax.evaluation.features import extract_features
from ssljax.evaluation import finetune, reconstruction  # noqa: F401,E402  (register 'finetune', 'reconstruction')
from ssljax.evaluation.knn import knn_predict, knn_predict_sharded, knn_top1
from ssljax.evaluation.linear_probe import online_probe_init, online_probe_loss, train_linear_probe

__all__ = [
    "EVALUATORS", "EvalContext", "EvalRunner", "Evaluator", "Features", "alignment", "clustering_metrics",
    "eigen_alignment", "extract_features", "feature_std", "kmeans_cluster_eval", "knn_predict", "knn_predict_sharded",
    "knn_top1", "make_context", "make_runner", "online_probe_init", "online_probe_loss", "rankme",
    "register_evaluator", "train_linear_probe", "uniformity", "validate_evals",
    "balanced_subset", "layer_features", "part_boxes",
]
