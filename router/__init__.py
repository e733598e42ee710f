"""The routing model: score how likely a prompt needs the strong model, and turn scores into tiers.

This package has no web or LiteLLM dependencies (only onnxruntime, tokenizers and numpy) so that the proxy,
the CLI and the scripts can all use it, and serving never imports training code.
"""

from __future__ import annotations

from router.classifier import Classifier, InferenceError, ModelLoadError, ModelMeta, Router, RouterError
from router.policy import Policy, Tier, TierPolicy, decide, quantiles_from_scores, threshold_for_strong_share
from router.scoring import CalibrationResult, ScoreInputError, calibrate, score_jsonl

__all__ = [
    "CalibrationResult",
    "Classifier",
    "InferenceError",
    "ModelLoadError",
    "ModelMeta",
    "Policy",
    "Router",
    "RouterError",
    "ScoreInputError",
    "Tier",
    "TierPolicy",
    "calibrate",
    "decide",
    "quantiles_from_scores",
    "score_jsonl",
    "threshold_for_strong_share",
]
