"""A version's `metadata.json`: written by retrain beside the SavedModel, read by the updater,
the scorer's drift tracker and `recstream versions`.

Top-level keys (all written by retrain.job.metadata):
- `model`, `version`, `created` (epoch s), `parent_version` (int or null)
- `metrics`: the gate's holdout, `{"candidate"|"active"|"popularity": {"hr", "ndcg", "k", ...}}`
- `window`: the training window (`first_ts`, `last_ts`, ...), `parameters`, `seconds`, `holdouts`
- `tuning` (only with `retrain --tune`): the trials, their validation figures and the one chosen
  (retrain.tune.Tuning); `parameters` are then the chosen ones
- `reference`: the training data's distributions the drift tracker compares live traffic with
  (`DriftReference`)
- `lineage`: what the version learnt from (retrain.lineage), `newest_event_ts` among it
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

METADATA = "metadata.json"  # the file's name in a version directory; uploaded last


@dataclass(frozen=True, slots=True)
class DriftReference:
    """metadata.json `reference`: item popularity (shares of the top items) and the data's size."""

    item_share: dict[str, float]
    users: int
    items: int
    events: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @staticmethod
    def item_shares(meta: Mapping[str, Any]) -> dict[str, float] | None:
        """The reference's item shares, None when the version has none (or a malformed one)."""
        reference = meta.get("reference")
        shares = reference.get("item_share") if isinstance(reference, Mapping) else None
        if not isinstance(shares, Mapping) or not shares:
            return None
        try:
            return {str(item): float(share) for item, share in shares.items()}
        except (TypeError, ValueError):
            return None


def newest_event_ts(meta: Mapping[str, Any]) -> float | None:
    """The event time of the newest record a version learnt from (its data's freshness)."""
    lineage = meta.get("lineage") if isinstance(meta.get("lineage"), Mapping) else {}
    window = meta.get("window") if isinstance(meta.get("window"), Mapping) else {}
    value = lineage.get("newest_event_ts", window.get("last_ts"))  # type: ignore[union-attr]
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None
