"""How a shadow's answers compare with the serving version's, by the kind of model.

- classification: the share of rows whose predicted class agrees (``agreement``), and the mean
  absolute difference of their class probabilities;
- regression: how far apart the two predictions of a row are — the mean and p95 absolute difference,
  and both relative to the serving version's spread (the standard deviation of its predictions among
  the rows compared), so one limit means the same for prices and for probabilities. Equality of floats
  means nothing here: a retrained regressor never agrees exactly, and float noise must not count.

Everything is kept as counters that add up (``Agreement.counters``): the p95 comes from a histogram
of absolute differences in buckets ``GROWTH`` wide (log-spaced, at most ``HIGHEST - LOWEST + 2`` of
them, each labelled with its bounds), so a trial of any length holds a bounded memory, and the counts
of several serving pods sum (Kubernetes) and subtract (a window's start). One implementation for
every place that mirrors: the serving app's own mirror (Kubernetes) and the local router (the Docker
target); the deploy turns the counters into figures and a verdict (``asgard.deploy.strategies``).
"""

from __future__ import annotations

import json
import math
from collections import Counter
from typing import Any

PREFIX = "asgard_shadow"
# Absolute differences are counted in buckets 1.1x wide from 1.1**-290 (about 1e-12) to 1.1**290
# (about 1e12), plus one for exact zeros: a p95 read within its bucket is off by under 10%, and a
# window holds at most 582 counts (only the buckets something fell in are kept and shown).
GROWTH = 1.1
LOWEST, HIGHEST = -290, 290
ZERO = LOWEST - 1
BUCKETS = f"{PREFIX}_abs_difference_rows"


class Agreement:
    """What one window of mirrored answers showed, for a classifier and a regressor alike."""

    def __init__(self) -> None:
        self.compared_rows = self.agreed_rows = 0
        self.probability_diff_sum, self.probability_values = 0.0, 0
        self.difference_rows = self.fractional_rows = 0
        self.abs_difference_sum = self.stable_sum = self.stable_square_sum = 0.0
        self.difference_buckets: Counter[int] = Counter()

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
        for a, b in zip(left, right, strict=True):
            if _number(a) and _number(b) and math.isfinite(a) and math.isfinite(b):
                self.difference_rows += 1
                self.fractional_rows += not (float(a).is_integer() and float(b).is_integer())
                self.stable_sum += a
                self.stable_square_sum += a * a
                difference = abs(float(a) - float(b))
                self.abs_difference_sum += difference
                self.difference_buckets[_bucket(difference)] += 1
        mine, theirs = stable.get("probabilities"), shadow.get("probabilities")
        if isinstance(mine, list) and isinstance(theirs, list) and len(mine) == len(theirs):
            for a, b in zip(mine, theirs, strict=True):
                if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
                    self.probability_diff_sum += sum(abs(float(x) - float(y)) for x, y in zip(a, b, strict=True))
                    self.probability_values += len(a)

    def counters(self) -> dict[str, float]:
        """Every count as a ``/metrics`` counter (``asgard_shadow_*``); the histogram's buckets only
        where something fell (``asgard_shadow_abs_difference_rows{gt="0.909091",le="1"} 12``), not cumulative."""
        counts = {
            f"{PREFIX}_compared_rows_total": self.compared_rows,
            f"{PREFIX}_agreed_rows_total": self.agreed_rows,
            f"{PREFIX}_probability_abs_diff_sum": self.probability_diff_sum,
            f"{PREFIX}_probability_values_total": self.probability_values,
            f"{PREFIX}_difference_rows_total": self.difference_rows,
            f"{PREFIX}_fractional_rows_total": self.fractional_rows,
            f"{PREFIX}_abs_difference_sum": self.abs_difference_sum,
            f"{PREFIX}_stable_prediction_sum": self.stable_sum,
            f"{PREFIX}_stable_prediction_square_sum": self.stable_square_sum,
        }
        for bucket, rows in sorted(self.difference_buckets.items()):
            counts[f"{BUCKETS}{_label(bucket)}"] = rows
        return counts

    def lines(self) -> list[str]:
        """``counters`` in Prometheus' text format, one ``# TYPE`` line per series family."""
        lines, typed = [], set()
        for name, value in self.counters().items():
            family = name.split("{", 1)[0]
            if family not in typed:
                typed.add(family)
                lines.append(f"# TYPE {family} counter")
            lines.append(f"{name} {value}")
        return lines

    @property
    def rate(self) -> float | None:
        return self.agreed_rows / self.compared_rows if self.compared_rows else None

    @property
    def mean_abs_probability_diff(self) -> float | None:
        return self.probability_diff_sum / self.probability_values if self.probability_values else None


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _bucket(difference: float) -> int:
    if difference == 0:
        return ZERO
    return min(max(math.ceil(math.log(difference, GROWTH)), LOWEST), HIGHEST)


def _bound(bucket: int) -> float:
    return 0.0 if bucket <= ZERO else GROWTH**bucket


def _label(bucket: int) -> str:
    """The bucket's bounds, written out: whoever sums the counters needs to know nothing of the layout."""
    return f'{{gt="{_bound(bucket - 1):.6g}",le="{_bound(bucket):.6g}"}}'
