"""How a shadow's answers compare with the serving version's: rows whose predictions agree, and the
mean absolute difference of their class probabilities. One implementation for every place that
mirrors: the serving app's own mirror (Kubernetes) and the local router (the Docker target)."""

from __future__ import annotations

import json


class Agreement:
    def __init__(self) -> None:
        self.compared_rows = self.agreed_rows = 0
        self.probability_diff_sum, self.probability_values = 0.0, 0

    def compare(self, stable_answer: bytes, shadow_answer: bytes) -> None:
        """Two ``/predict`` answers to one request; answers that cannot be paired row by row are skipped."""
        try:
            stable, shadow = json.loads(stable_answer), json.loads(shadow_answer)
            left, right = stable["predictions"], shadow["predictions"]
        except (ValueError, KeyError, TypeError):
            return
        if not isinstance(left, list) or not isinstance(right, list) or len(left) != len(right):
            return
        self.compared_rows += len(left)
        self.agreed_rows += sum(a == b for a, b in zip(left, right, strict=True))
        mine, theirs = stable.get("probabilities"), shadow.get("probabilities")
        if isinstance(mine, list) and isinstance(theirs, list) and len(mine) == len(theirs):
            for a, b in zip(mine, theirs, strict=True):
                if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
                    self.probability_diff_sum += sum(abs(float(x) - float(y)) for x, y in zip(a, b, strict=True))
                    self.probability_values += len(a)

    @property
    def rate(self) -> float | None:
        return self.agreed_rows / self.compared_rows if self.compared_rows else None

    @property
    def mean_abs_probability_diff(self) -> float | None:
        return self.probability_diff_sum / self.probability_values if self.probability_values else None
