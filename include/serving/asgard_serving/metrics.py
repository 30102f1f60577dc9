"""What the prediction paths answered, in Prometheus' text format (``GET /metrics``).

Requests by status class and a latency histogram, counted in this process. A deploy with no service
mesh reads them from each pod (through the API server's pod proxy) to judge a canary against the
stable version; a Prometheus scraping the pods gets the same series. Counting costs a bisect and
three additions per request.
"""

from __future__ import annotations

import bisect
import threading

# Upper bounds in seconds, 1.25x apart from 0.5 ms to ~30 s: a p99 read from them is within 12% of the
# true one, fine enough to compare two versions' latencies.
BOUNDS = tuple(round(0.0005 * 1.25**step, 7) for step in range(50))
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class RequestMetrics:
    """Requests by status class and their latencies, as ``<prefix>_requests_total`` and ``<prefix>_seconds``."""

    def __init__(self, prefix: str = "asgard_prediction", what: str = "Prediction requests answered") -> None:
        self.prefix, self.what = prefix, what
        self.by_class = [0] * 6  # index: status // 100
        self.buckets = [0] * (len(BOUNDS) + 1)  # the last: above every bound
        self.seconds = 0.0

    def observe(self, status: int, seconds: float) -> None:
        self.by_class[min(status // 100, 5)] += 1
        self.buckets[bisect.bisect_left(BOUNDS, seconds)] += 1
        self.seconds += seconds

    def lines(self) -> list[str]:
        prefix = self.prefix
        lines = [
            f"# HELP {prefix}_requests_total {self.what}, by status class.",
            f"# TYPE {prefix}_requests_total counter",
        ]
        lines += [
            f'{prefix}_requests_total{{code="{index}xx"}} {count}'
            for index, count in enumerate(self.by_class)
            if index >= 2
        ]
        lines += [f"# HELP {prefix}_seconds {self.what}: seconds to the answer.", f"# TYPE {prefix}_seconds histogram"]
        cumulative = 0
        for bound, count in zip((*BOUNDS, "+Inf"), self.buckets, strict=True):
            cumulative += count
            lines.append(f'{prefix}_seconds_bucket{{le="{bound}"}} {cumulative}')
        lines += [f"{prefix}_seconds_sum {self.seconds}", f"{prefix}_seconds_count {cumulative}"]
        return lines


class ModelTime:
    """Seconds the model took (the requests' columns in, their answers out), as ``<prefix>_seconds``, a
    summary counting requests: beside the requests' own seconds it says what share of serving is the
    model, and what is the work around it. Large requests are predicted on worker threads, hence the
    lock."""

    def __init__(self, prefix: str = "asgard_prediction_model") -> None:
        self.prefix = prefix
        self.seconds, self.count = 0.0, 0
        self._lock = threading.Lock()

    def observe(self, seconds: float, requests: int = 1) -> None:
        """One call of the model, for ``requests`` requests (``asgard_serving.batching``)."""
        with self._lock:
            self.seconds += seconds
            self.count += requests

    def lines(self) -> list[str]:
        prefix = self.prefix
        return [
            f"# HELP {prefix}_seconds Seconds in the model: the columns of a prediction request in, its answer out.",
            f"# TYPE {prefix}_seconds summary",
            f"{prefix}_seconds_sum {self.seconds}",
            f"{prefix}_seconds_count {self.count}",
        ]
