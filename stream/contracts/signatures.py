"""SavedModel signature names and serving labels: the model contract between retrain, updater and scorer.

- RECOMMEND (`serving_default`): user_id string [N], k int32 [] -> items [N, k], scores [N, k],
  model_version int64 [], fallback bool [N].
- RECOMMEND_HISTORY: user_id string [N], history string [N, H] (the user's latest purchases,
  most recent first, "" pads), k int32 [] -> the outputs of RECOMMEND. The history is live
  (the scorer's table), so a purchase changes the next answer before any retrain. Versions
  exported before it lack it; callers fall back to RECOMMEND.
- SCORE: users string [N], products string [N] -> scores float [N].
"""

from __future__ import annotations

RECOMMEND = "serving_default"
RECOMMEND_HISTORY = "recommend_history"
SCORE = "score"

STABLE_LABEL = "stable"  # the version the updater activated
PREVIOUS_LABEL = "previous"  # the one before it, kept loaded for instant rollback
