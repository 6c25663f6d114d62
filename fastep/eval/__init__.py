"""Evaluation of StEP models: metrics (:mod:`.metrics`), figures (:mod:`.figures`), the
checkpoint protocol (:mod:`.protocol`) and the ``fastep eval`` / ``fastep sample`` commands."""
from .metrics import (chance_accuracy, frechet_distance, inception_score, linear_probe_accuracy,
                      linear_probe_r2, nn_retrieval_accuracy, pairwise_mean_distance, psnr)

__all__ = ["psnr", "pairwise_mean_distance", "linear_probe_accuracy", "linear_probe_r2",
           "nn_retrieval_accuracy", "chance_accuracy", "frechet_distance", "inception_score"]
