"""How a new version meets live traffic before it serves alone: replace, canary or shadow.

``replace`` is the verified switch every target does. ``canary`` sends a share of the live
prediction requests to the new version (callers get its answers); ``shadow`` mirrors a share to it
and answers every caller from the stable version. Either way the router counts, per side, requests,
server errors and latencies over the trial (``TrafficWindow``), and ``decide`` turns those counts
into a verdict against the limits: a breach rolls the new version back, a pass promotes it to all
traffic. The decision and its figures are tagged on the version (``deploy.canary.*``,
``deploy.shadow.*``).
"""

from __future__ import annotations

import json
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from asgard.core.xcom import XComRecord

REPLACE, CANARY, SHADOW = "replace", "canary", "shadow"
STRATEGIES = (REPLACE, CANARY, SHADOW)
# Latencies kept per side for its p99: enough for any trial window, bounded for a router that runs for weeks.
LATENCIES_KEPT = 50_000


@dataclass(frozen=True)
class Rollout(XComRecord):
    """A deploy's strategy and, for a trial (canary or shadow), its share of traffic, window and limits.

    The window closes once the new version has answered ``min_requests`` requests, or after
    ``duration`` seconds (with ``min_requests`` 0, the window is the duration). Too little traffic in
    ``duration`` is a breach: a version nobody tried is not promoted.
    """

    strategy: str = REPLACE
    percent: int = 10
    min_requests: int = 100
    duration: float = 300.0
    max_error_rate: float = 0.01
    max_p99_ratio: float = 2.0
    min_agreement: float | None = None

    @property
    def trial(self) -> bool:
        return self.strategy != REPLACE

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> Rollout:
        # Imported here: the router reads this module, and it must start without Airflow.
        from asgard.core.errors import InputError

        strategy = params.get("strategy") or REPLACE
        if strategy not in STRATEGIES:
            raise InputError(f"strategy must be one of {', '.join(STRATEGIES)}, not {strategy!r}")
        given = {key: params[key] for key in ROLLOUT_KEYS if params.get(key) is not None}
        rollout = cls(strategy=strategy, **given)
        if rollout.min_agreement is not None and strategy != SHADOW:
            raise InputError("min_agreement applies to the shadow strategy only (a canary's callers see its answers)")
        return rollout


REPLACING = Rollout()
ROLLOUT_KEYS = ("percent", "min_requests", "duration", "max_error_rate", "max_p99_ratio", "min_agreement")


class Side:
    """One side of a trial (the stable version or the candidate): requests, server errors, latencies."""

    def __init__(self) -> None:
        self.requests = 0
        self.errors = 0
        self.latencies: deque[float] = deque(maxlen=LATENCIES_KEPT)

    def record(self, status: int | None, seconds: float) -> None:
        """``status`` None: the version could not be reached. A 4xx is the caller's mistake, not an error."""
        self.requests += 1
        if status is None or status >= 500:
            self.errors += 1
        else:
            self.latencies.append(seconds)

    def summary(self) -> dict[str, Any]:
        latencies = sorted(self.latencies)
        p99 = latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))] if latencies else None
        return {
            "requests": self.requests,
            "errors": self.errors,
            "error_rate": self.errors / self.requests if self.requests else None,
            "p99_ms": round(p99 * 1000, 3) if p99 is not None else None,
        }


class TrafficWindow:
    """What the router saw of one trial: both sides and, for a shadow, how the answers compared.

    Kept by the router in memory, per model, for the candidate upstream in the route; a new candidate
    starts a new window.
    """

    def __init__(self, candidate: str, strategy: str, percent: int) -> None:
        self.candidate, self.strategy, self.percent = candidate, strategy, percent
        self.stable, self.tried = Side(), Side()
        self.offered = 0
        self.compared_rows = self.agreed_rows = 0
        self.probability_diff_sum, self.probability_values = 0.0, 0
        self.mirrors_dropped = 0

    def choose(self) -> bool:
        """Whether this request goes to (or is mirrored to) the candidate: exactly ``percent`` of every
        100 in turn, evenly spread, so a small window still sees its share."""
        self.offered += 1
        return (self.offered * self.percent) // 100 != ((self.offered - 1) * self.percent) // 100

    def compare(self, stable_answer: bytes, candidate_answer: bytes) -> None:
        """A shadow's two answers to one request: rows whose predictions agree, and the mean absolute
        difference of their class probabilities (when both returned them)."""
        try:
            stable, candidate = json.loads(stable_answer), json.loads(candidate_answer)
            left, right = stable["predictions"], candidate["predictions"]
        except (ValueError, KeyError, TypeError):
            return
        if len(left) != len(right):
            return
        self.compared_rows += len(left)
        self.agreed_rows += sum(a == b for a, b in zip(left, right, strict=True))
        mine, theirs = stable.get("probabilities"), candidate.get("probabilities")
        if isinstance(mine, list) and isinstance(theirs, list) and len(mine) == len(theirs):
            for a, b in zip(mine, theirs, strict=True):
                if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
                    self.probability_diff_sum += sum(abs(float(x) - float(y)) for x, y in zip(a, b, strict=True))
                    self.probability_values += len(a)

    def summary(self) -> dict[str, Any]:
        return {
            "strategy": self.strategy,
            "percent": self.percent,
            "candidate": self.candidate,
            "stable": self.stable.summary(),
            "candidate_side": self.tried.summary(),
            "compared_rows": self.compared_rows,
            "agreement": self.agreed_rows / self.compared_rows if self.compared_rows else None,
            "mean_abs_probability_diff": (
                self.probability_diff_sum / self.probability_values if self.probability_values else None
            ),
            "mirrors_dropped": self.mirrors_dropped,
        }


@dataclass(frozen=True)
class Verdict:
    """``state``: ``watching`` (the window is open), ``pass`` or ``breach``; ``reason`` says which limit."""

    state: str
    reason: str
    figures: dict[str, Any]


def decide(rollout: Rollout, traffic: dict[str, Any], elapsed: float) -> Verdict:
    """The trial's verdict from the router's counts ``traffic`` (``TrafficWindow.summary``) after ``elapsed`` s."""
    tried, stable = traffic["candidate_side"], traffic["stable"]
    requests, errors = tried["requests"], tried["errors"]
    figures = _figures(rollout, traffic, elapsed)

    def breach(limit: str, why: str) -> Verdict:
        reason = f"{limit}: {why}"
        return Verdict("breach", reason, {**figures, "decision": "rolled_back", "limit": limit, "reason": reason})

    allowed = rollout.max_error_rate * rollout.min_requests
    if rollout.min_requests and errors > allowed:
        # More errors than the whole window may hold: no later request can bring the rate back.
        return breach(
            "max_error_rate",
            f"{errors} of the new version's first {requests} requests failed, more than "
            f"{rollout.max_error_rate:.2%} of {rollout.min_requests}",
        )
    window_full = rollout.min_requests and requests >= rollout.min_requests
    if not window_full and elapsed < rollout.duration:
        return Verdict("watching", f"{requests} request(s) so far", figures)
    if requests < max(rollout.min_requests, 1):
        return breach(
            "min_requests",
            f"only {requests} request(s) reached the new version in {rollout.duration:.0f}s "
            f"(needs {max(rollout.min_requests, 1)}): a version live traffic has not tried is not promoted",
        )
    if errors / requests > rollout.max_error_rate:
        return breach(
            "max_error_rate",
            f"{errors} of {requests} requests failed ({errors / requests:.2%} > {rollout.max_error_rate:.2%})",
        )
    ratio = figures.get("p99_ratio")
    if ratio is not None and ratio > rollout.max_p99_ratio:
        return breach(
            "max_p99_ratio",
            f"p99 {tried['p99_ms']:.1f} ms against the stable version's {stable['p99_ms']:.1f} ms "
            f"({ratio:.2f}x > {rollout.max_p99_ratio:g}x)",
        )
    agreement = traffic.get("agreement")
    if rollout.min_agreement is not None and (agreement is None or agreement < rollout.min_agreement):
        shown = "no comparable answers" if agreement is None else f"{agreement:.2%}"
        return breach("min_agreement", f"agreement {shown} < {rollout.min_agreement:.2%}")
    reason = f"within every limit over {requests} requests"
    return Verdict("pass", reason, {**figures, "decision": "promoted", "reason": reason})


def _figures(rollout: Rollout, traffic: dict[str, Any], elapsed: float) -> dict[str, Any]:
    tried, stable = traffic["candidate_side"], traffic["stable"]
    figures: dict[str, Any] = {
        "percent": rollout.percent,
        "seconds": round(elapsed, 1),
        "requests": tried["requests"],
        "errors": tried["errors"],
        "error_rate": tried["error_rate"],
        "p99_ms": tried["p99_ms"],
        "stable_requests": stable["requests"],
        "stable_p99_ms": stable["p99_ms"],
        "p99_ratio": (round(tried["p99_ms"] / stable["p99_ms"], 3) if tried["p99_ms"] and stable["p99_ms"] else None),
    }
    if rollout.strategy == SHADOW:
        figures.update(
            compared_rows=traffic["compared_rows"],
            agreement=traffic["agreement"],
            mean_abs_probability_diff=traffic["mean_abs_probability_diff"],
            mirrors_dropped=traffic["mirrors_dropped"],
        )
    return figures


def watch(
    rollout: Rollout,
    traffic: Callable[[], dict[str, Any] | None],
    *,
    progress: Callable[[str], None],
    poll: float = 1.0,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> Verdict:
    """Ask ``traffic`` (the router's window for this trial) every ``poll`` s until the verdict is in."""
    started, said = clock(), 0.0
    while True:
        window = traffic()
        elapsed = clock() - started
        verdict = decide(rollout, window or _empty(rollout), elapsed)
        if verdict.state != "watching":
            return verdict
        if elapsed - said >= 10:
            said = elapsed
            progress(f"{rollout.strategy}: {verdict.reason} after {elapsed:.0f}s")
        sleep(poll)


def _empty(rollout: Rollout) -> dict[str, Any]:
    return TrafficWindow("", rollout.strategy, rollout.percent).summary()


# --- counts read from pods (the kubernetes target, which has no router to count at) ------------------


def parse_metrics(exposition: str) -> dict[str, Any]:
    """A serving pod's ``/metrics`` (``asgard_serving.metrics``): requests, server errors, latency buckets."""
    requests = errors = 0.0
    buckets: dict[str, float] = {}
    for line in exposition.splitlines():
        if line.startswith("asgard_prediction_requests_total{"):
            value = float(line.rsplit(" ", 1)[1])
            requests += value
            if 'code="5xx"' in line:
                errors += value
        elif line.startswith("asgard_prediction_seconds_bucket{"):
            bound = line.split('le="', 1)[1].split('"', 1)[0]
            buckets[bound] = float(line.rsplit(" ", 1)[1])
    return {"requests": requests, "errors": errors, "buckets": buckets}


def combine(counts: list[dict[str, Any]], minus: dict[str, Any] | None = None) -> dict[str, Any]:
    """Several pods' counts summed, less ``minus`` (what they had counted when the trial began)."""
    total: dict[str, Any] = {"requests": 0.0, "errors": 0.0, "buckets": {}}
    for one in counts:
        total["requests"] += one["requests"]
        total["errors"] += one["errors"]
        for bound, value in one["buckets"].items():
            total["buckets"][bound] = total["buckets"].get(bound, 0.0) + value
    if minus:
        total["requests"] -= minus["requests"]
        total["errors"] -= minus["errors"]
        for bound, value in minus["buckets"].items():
            total["buckets"][bound] = total["buckets"].get(bound, 0.0) - value
    return total


def side_summary(counts: dict[str, Any]) -> dict[str, Any]:
    """``Side.summary``'s shape from pod counts: p99 read from the histogram as Prometheus'
    ``histogram_quantile`` does (linear within the bucket it falls in)."""
    requests, errors = int(counts["requests"]), int(counts["errors"])
    bounds = sorted(((float(bound), value) for bound, value in counts["buckets"].items()), key=lambda pair: pair[0])
    p99 = None
    if bounds and bounds[-1][1] > 0:
        rank, lower, below = 0.99 * bounds[-1][1], 0.0, 0.0
        for bound, cumulative in bounds:
            if cumulative >= rank:
                if bound == float("inf"):
                    p99 = lower
                else:
                    within = cumulative - below
                    p99 = lower + (bound - lower) * ((rank - below) / within if within else 1.0)
                break
            lower, below = bound, cumulative
    return {
        "requests": requests,
        "errors": errors,
        "error_rate": errors / requests if requests else None,
        "p99_ms": round(p99 * 1000, 3) if p99 is not None else None,
    }
