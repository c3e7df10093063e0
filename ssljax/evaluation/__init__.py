"""Evaluation of frozen representations: kNN monitor, linear probes, diagnostics, feature extraction."""

from ssljax.evaluation.diagnostics import (alignment, clustering_metrics, eigen_alignment, feature_std,
                                           kmeans_cluster_eval, rankme, uniformity)
from ssljax.evaluation.features import extract_features
from ssljax.evaluation.knn import knn_predict, knn_top1
from ssljax.evaluation.linear_probe import online_probe_init, online_probe_loss, train_linear_probe

__all__ = [
    "alignment", "clustering_metrics", "eigen_alignment", "extract_features", "feature_std", "kmeans_cluster_eval",
    "knn_predict", "knn_top1", "online_probe_init", "online_probe_loss", "rankme", "train_linear_probe",
    "uniformity",
]
