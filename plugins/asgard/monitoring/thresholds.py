"""When a monitored metric breaches, and how long a breach must last to alert (the seed's defaults).

Kept free of data libraries: the ``monitor_model`` DAG builds its Params form from these fields
every time its file is parsed.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

from asgard.core.errors import InputError

DRIFT_TYPES = ("feature_drift", "prediction_drift")


class MonitoringError(InputError):
    """The monitoring request cannot be answered as asked (unknown model, no reference, bad source)."""


@dataclass(frozen=True)
class Thresholds:
    """When a metric breaches, and how long a breach must last to alert (the seed's defaults)."""

    drift: float = 0.1
    p_value: float = 0.05  # and the drift must be significant at this level
    missing: float = 0.05
    out_of_range: float = 0.05
    unseen: float = 0.05
    accuracy: float = 0.7
    min_samples: int = 500
    min_labels: int = 100
    persistence: int = 2
    retrain_cooldown_hours: float = 72.0

    @classmethod
    def from_dict(cls, values: dict[str, Any] | None) -> Thresholds:
        known = {item.name for item in fields(cls)}
        unknown = sorted(set(values or {}) - known)
        if unknown:
            raise MonitoringError(f"unknown threshold(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        given = {key: value for key, value in (values or {}).items() if value is not None}
        # NaN compares false with everything (never alerts), inf is always under or over: neither is a threshold.
        odd = sorted(key for key, value in given.items() if isinstance(value, float) and not math.isfinite(value))
        if odd:
            raise MonitoringError(f"threshold(s) {', '.join(odd)} must be finite numbers")
        return cls(**given)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)
