"""Canary and shadow trials: the verdict from the router's counts, and the router splitting and
mirroring real HTTP traffic between two upstreams on loopback (the Docker target's load tests run the
real serving images: tests/integration/test_docker_target.py)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import socket
import threading
import time

import httpx
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from asgard.core.errors import InputError
from asgard.deploy.routes import RouteTable
from asgard.deploy.strategies import CANARY, SHADOW, Rollout, decide, watch
from asgard.local.router import VERSION_HEADER, TrafficWindow, create_app
from conftest import sqlite_mlflow_home


def traffic(requests=0, errors=0, p99=5.0, stable_requests=900, stable_p99=5.0, **shadow):
    return {
        "strategy": CANARY,
        "percent": 10,
        "candidate": "http://127.0.0.1:1",
        "stable": {"requests": stable_requests, "errors": 0, "error_rate": 0.0, "p99_ms": stable_p99},
        "candidate_side": {
            "requests": requests,
            "errors": errors,
            "error_rate": errors / requests if requests else None,
            "p99_ms": p99 if requests else None,
        },
        "compared_rows": shadow.get("compared_rows", 0),
        "agreement": shadow.get("agreement"),
        "mean_abs_probability_diff": shadow.get("diff"),
        "mirrors_dropped": 0,
    }


CANARY_10 = Rollout(strategy=CANARY, percent=10, min_requests=100, duration=60, max_error_rate=0.05, max_p99_ratio=2)


def test_a_canary_within_its_limits_is_promoted_once_its_window_is_full():
    assert decide(CANARY_10, traffic(requests=40), elapsed=5).state == "watching"
    verdict = decide(CANARY_10, traffic(requests=100, errors=3, p99=7.0), elapsed=9)
    assert verdict.state == "pass", verdict
    assert verdict.figures["decision"] == "promoted"
    assert verdict.figures["requests"] == 100 and verdict.figures["errors"] == 3
    assert verdict.figures["p99_ratio"] == 1.4 and verdict.figures["stable_p99_ms"] == 5.0


def test_a_canary_is_rolled_back_as_soon_as_its_errors_cannot_fit_the_window():
    # 5% of 100 is 5: the sixth error decides, whatever the next requests do.
    assert decide(CANARY_10, traffic(requests=10, errors=5), elapsed=1).state == "watching"
    verdict = decide(CANARY_10, traffic(requests=12, errors=6), elapsed=1)
    assert verdict.state == "breach"
    assert verdict.reason.startswith("max_error_rate: 6 of the new version's first 12 requests failed")
    assert verdict.figures["limit"] == "max_error_rate" and verdict.figures["decision"] == "rolled_back"


def test_a_slow_canary_breaches_the_p99_ratio():
    verdict = decide(CANARY_10, traffic(requests=100, p99=120.0), elapsed=9)
    assert verdict.state == "breach" and verdict.figures["limit"] == "max_p99_ratio"
    assert "p99 120.0 ms against the stable version's 5.0 ms (24.00x > 2x, 115.0 ms slower > the 50 ms" in (
        verdict.reason
    )


def test_a_p99_above_the_ratio_by_less_than_the_tolerance_is_jitter_not_a_breach():
    """A few milliseconds' p99 over a small window is its slowest request: 12 ms against 5 is 2.4x, and
    7 ms a caller does not feel. With no tolerance the ratio alone decides."""
    jitter = traffic(requests=100, p99=12.0)
    verdict = decide(CANARY_10, jitter, elapsed=9)
    assert verdict.state == "pass" and verdict.figures["p99_ratio"] == 2.4, verdict
    strict = dataclasses.replace(CANARY_10, p99_tolerance_ms=0)
    verdict = decide(strict, jitter, elapsed=9)
    assert verdict.state == "breach" and verdict.figures["limit"] == "max_p99_ratio"
    assert "(2.40x > 2x, 7.0 ms slower > the 0 ms tolerance)" in verdict.reason


def test_too_little_traffic_by_the_duration_is_not_promoted():
    verdict = decide(CANARY_10, traffic(requests=30), elapsed=60)
    assert verdict.state == "breach" and verdict.figures["limit"] == "min_requests"
    assert "only 30 request(s) reached the new version in 60s (needs 100)" in verdict.reason


def test_with_min_requests_0_the_window_is_the_duration():
    timed = Rollout(strategy=CANARY, min_requests=0, duration=30, max_error_rate=0.1)
    assert decide(timed, traffic(requests=500, errors=20), elapsed=29).state == "watching"
    assert decide(timed, traffic(requests=500, errors=20), elapsed=30).state == "pass"
    assert decide(timed, traffic(requests=500, errors=60), elapsed=30).figures["limit"] == "max_error_rate"
    assert decide(timed, traffic(requests=0), elapsed=30).figures["limit"] == "min_requests"


def test_a_shadow_reports_its_agreement_and_enforces_it_only_when_asked():
    seen = traffic(requests=100, compared_rows=100, agreement=0.62, diff=0.21)
    reported = decide(Rollout(strategy=SHADOW, min_requests=100), seen, elapsed=5)
    assert reported.state == "pass"
    assert reported.figures["agreement"] == 0.62 and reported.figures["mean_abs_probability_diff"] == 0.21
    enforced = decide(Rollout(strategy=SHADOW, min_requests=100, min_agreement=0.9), seen, elapsed=5)
    assert enforced.state == "breach" and enforced.reason == "min_agreement: agreement 62.00% < 90.00%"


def test_watch_polls_until_the_verdict_and_says_how_it_goes():
    counts = iter([traffic(requests=n) for n in (0, 30, 70, 100)])
    now = [0.0]
    said: list[str] = []
    verdict = watch(
        CANARY_10,
        lambda: next(counts),
        progress=said.append,
        clock=lambda: now[0],
        sleep=lambda s: now.__setitem__(0, now[0] + 6),
    )
    assert verdict.state == "pass" and verdict.figures["seconds"] == 18
    assert said == ["canary: 70 request(s) so far after 12s"]


def test_rollout_params_are_checked():
    assert Rollout.from_params({}).strategy == "replace" and not Rollout.from_params({}).trial
    shadow = Rollout.from_params({"strategy": "shadow", "percent": 25, "min_agreement": 0.9, "duration": None})
    assert (shadow.percent, shadow.min_agreement, shadow.duration) == (25, 0.9, 300.0)
    with pytest.raises(InputError, match="min_agreement applies to the shadow strategy only"):
        Rollout.from_params({"strategy": "canary", "min_agreement": 0.5})
    with pytest.raises(InputError, match="strategy must be one of replace, canary, shadow"):
        Rollout.from_params({"strategy": "blue"})


@pytest.mark.parametrize("percent", [1, 7, 10, 33, 50])
def test_a_share_is_exact_and_evenly_spread(percent):
    window = TrafficWindow("x", CANARY, percent)
    chosen = [window.choose() for _ in range(1000)]
    assert sum(chosen) == 10 * percent
    # Every run of 100 requests holds its share: a short window is not left to chance.
    assert all(sum(chosen[start : start + 100]) in (percent, percent + 1, percent - 1) for start in range(900))


def test_shadow_answers_are_compared_row_by_row():
    window = TrafficWindow("x", SHADOW, 10)
    stable = json.dumps({"predictions": [0, 1, 1, 0], "probabilities": [[1, 0], [0.2, 0.8], [0.4, 0.6], [0.9, 0.1]]})
    other = json.dumps({"predictions": [0, 1, 0, 0], "probabilities": [[1, 0], [0.2, 0.8], [0.6, 0.4], [0.7, 0.3]]})
    window.agreement.compare(stable.encode(), other.encode())
    window.agreement.compare(b"not json", other.encode())
    summary = window.summary()
    assert summary["compared_rows"] == 4 and summary["agreement"] == 0.75
    assert summary["mean_abs_probability_diff"] == pytest.approx((0.4 + 0.4) / 8)


# --- the router, over real HTTP ------------------------------------------------------------------


def _port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _upstream(version: str, *, fail_every: int = 0, prediction: int = 0, delay: float = 0.0) -> Starlette:
    """A stand-in serving version: answers /predict with its version (every ``fail_every``-th a 500)."""
    calls = [0]

    async def predict(request: Request) -> JSONResponse:
        calls[0] += 1
        await request.body()
        if delay:
            await asyncio.sleep(delay)
        if fail_every and calls[0] % fail_every == 0:
            return JSONResponse({"detail": "model failed"}, status_code=500)
        return JSONResponse(
            {
                "predictions": [prediction],
                "probabilities": [[1.0 - prediction, float(prediction)]],
                "model_version": version,
            }
        )

    async def metadata(_: Request) -> JSONResponse:
        return JSONResponse({"model_version": version})

    return Starlette(routes=[Route("/predict", predict, methods=["POST"]), Route("/metadata", metadata)])


@contextlib.contextmanager
def serving(app: Starlette):
    port = _port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@pytest.fixture
def router(tmp_path):
    table = RouteTable(tmp_path / "routes.json")
    with serving(create_app(table.path)) as url:
        yield table, url


def test_a_canary_answers_its_share_and_the_router_counts_both_sides(router):
    table, url = router
    with serving(_upstream("1")) as stable, serving(_upstream("2", fail_every=4)) as canary:
        candidate = {"upstream": canary, "version": "2", "strategy": CANARY, "percent": 20}
        table.set("churn", {"upstream": stable, "version": "1", "candidate": candidate})
        answers = [httpx.post(f"{url}/models/churn/predict", json={"inputs": {}}) for _ in range(100)]
        # Metadata and other paths stay on the stable version.
        assert httpx.get(f"{url}/models/churn/metadata").json() == {"model_version": "1"}
        seen = httpx.get(f"{url}/traffic/churn").json()

    by_version = {"1": [], "2": []}
    for answer in answers:
        by_version[answer.headers[VERSION_HEADER]].append(answer.status_code)
    assert len(by_version["2"]) == 20 and len(by_version["1"]) == 80
    assert by_version["1"] == [200] * 80  # callers saw failures only from the canary's share
    assert by_version["2"].count(500) == 5
    assert seen["candidate_side"]["requests"] == 20 and seen["candidate_side"]["errors"] == 5
    assert seen["stable"]["requests"] == 80 and seen["stable"]["errors"] == 0
    assert seen["stable"]["p99_ms"] > 0 and seen["candidate_side"]["p99_ms"] > 0


def test_a_shadow_sees_copies_and_never_changes_an_answer(router):
    table, url = router
    with serving(_upstream("1", prediction=0)) as stable, serving(_upstream("2", prediction=1, delay=0.3)) as shadow:
        candidate = {"upstream": shadow, "version": "2", "strategy": SHADOW, "percent": 50}
        table.set("churn", {"upstream": stable, "version": "1", "candidate": candidate})
        with httpx.Client() as client:
            started = time.perf_counter()
            answers = [client.post(f"{url}/models/churn/predict", json={"inputs": {}}) for _ in range(20)]
            took = time.perf_counter() - started
        deadline = time.monotonic() + 10
        while (seen := httpx.get(f"{url}/traffic/churn").json())["compared_rows"] < 10 and time.monotonic() < deadline:
            time.sleep(0.1)

    assert all(a.status_code == 200 and a.json()["model_version"] == "1" for a in answers)
    assert {a.headers[VERSION_HEADER] for a in answers} == {"1"}
    # Ten mirrors of 0.3 s each: the callers did not wait for them.
    assert took < 2.5, took
    assert seen["strategy"] == SHADOW and seen["candidate_side"]["requests"] == 10
    assert seen["compared_rows"] == 10 and seen["agreement"] == 0.0
    assert seen["mean_abs_probability_diff"] == 1.0
    assert seen["candidate_side"]["p99_ms"] >= 300


def test_a_canary_that_went_away_costs_callers_nothing(router):
    table, url = router
    with serving(_upstream("1")) as stable:
        gone = f"http://127.0.0.1:{_port()}"
        table.set(
            "churn",
            {
                "upstream": stable,
                "version": "1",
                "candidate": {"upstream": gone, "version": "2", "strategy": CANARY, "percent": 50},
            },
        )
        answers = [httpx.post(f"{url}/models/churn/predict", json={"inputs": {}}) for _ in range(10)]
        seen = httpx.get(f"{url}/traffic/churn").json()
        table.set("churn", {"upstream": stable, "version": "1"})
        assert httpx.get(f"{url}/traffic/churn").json() is None
    assert [a.status_code for a in answers] == [200] * 10
    assert seen["candidate_side"] == {**seen["candidate_side"], "requests": 5, "errors": 5}


def test_a_request_in_flight_when_the_trial_ends_counts_in_its_final_figures(router):
    """The route switches back while a canary request is on its way: the candidate's failure still
    reached a caller, and the ended window (asked for by its candidate) counts it."""
    from concurrent.futures import ThreadPoolExecutor

    table, url = router
    with serving(_upstream("1")) as stable, serving(_upstream("2", fail_every=1, delay=1.0)) as canary:
        candidate = {"upstream": canary, "version": "2", "strategy": CANARY, "percent": 100}
        table.set("churn", {"upstream": stable, "version": "1", "candidate": candidate})
        with ThreadPoolExecutor(1) as pool:
            late = pool.submit(httpx.post, f"{url}/models/churn/predict", json={"inputs": {}}, timeout=10)
            deadline = time.monotonic() + 5
            while not httpx.get(f"{url}/inflight").json().get(canary) and time.monotonic() < deadline:
                time.sleep(0.02)
            at_switch = httpx.get(f"{url}/traffic/churn").json()["candidate_side"]
            table.set("churn", {"upstream": stable, "version": "1"})
            assert late.result().status_code == 500
        assert at_switch["requests"] == 0  # the decision's counts stopped before the answer came
        assert httpx.get(f"{url}/traffic/churn").json() is None  # no trial in progress
        ended = httpx.get(f"{url}/traffic/churn", params={"candidate": canary}).json()
        assert ended["candidate_side"]["requests"] == 1 and ended["candidate_side"]["errors"] == 1
        assert httpx.get(f"{url}/traffic/churn", params={"candidate": stable}).json() is None


def test_a_deploy_request_carries_its_rollout_to_either_target(tmp_path):
    from asgard.deploy.rollout import DeployRequest, deployment_request

    request = deployment_request({"model_name": "churn", "strategy": "canary", "percent": 20, "min_requests": 50})
    again = DeployRequest.from_dict(request.to_dict())  # through XCom
    assert again.rollout_plan == Rollout(strategy=CANARY, percent=20, min_requests=50)
    assert deployment_request({"model_name": "churn"}).rollout_plan.strategy == "replace"
    with sqlite_mlflow_home(tmp_path):  # a kubernetes request asks the registry for the model's team's namespace
        for strategy in ("canary", "shadow"):
            on_kubernetes = deployment_request({"model_name": "churn", "target": "kubernetes", "strategy": strategy})
            assert on_kubernetes.rollout_plan.strategy == strategy


def test_a_deploy_exposes_stored_features_only_when_its_conf_says_true():
    """``expose_features``: off unless the conf says true (a promotion's run has no conf); only a
    boolean passes the form's schema."""
    from airflow.sdk.exceptions import ParamValidationError

    from asgard.deploy.params import deploy_model_params
    from asgard.deploy.rollout import DeployRequest, deployment_request

    param = deploy_model_params()["expose_features"]
    assert param.resolve() is False
    with pytest.raises(ParamValidationError):
        param.resolve("true")
    assert deployment_request({"model_name": "churn"}).expose_features is False
    exposed = deployment_request({"model_name": "churn", "expose_features": True})
    assert DeployRequest.from_dict(exposed.to_dict()).expose_features is True  # through XCom


def test_the_router_holds_no_more_of_a_request_or_an_answer_than_its_limits(router, monkeypatch):
    """A 300 MB body to a model that does not exist took the router to 645 MB before its 404 (found by a
    hostile review): the route is looked up before the body is read, a body over the serving limit is a
    413 as it comes, and an answer without end from a model's container is a 502."""
    from asgard.local import router as router_module

    table, url = router
    monkeypatch.setattr(router_module, "MAX_BODY_BYTES", 1000)
    monkeypatch.setattr(router_module, "MAX_ANSWER_BYTES", 4000)

    async def endless(request: Request):
        from starlette.responses import StreamingResponse

        async def chunks():
            while True:
                yield b"x" * 1024
                await asyncio.sleep(0)

        return StreamingResponse(chunks())

    flood = Starlette(routes=[Route("/predict", endless, methods=["POST"])])
    with serving(_upstream("1")) as honest, serving(flood) as flooding:
        table.set("churn", {"upstream": honest, "version": "1"})
        table.set("flood", {"upstream": flooding, "version": "1"})
        with httpx.Client(timeout=30) as client:
            missing = client.post(f"{url}/models/nosuch/predict", content=b"x" * 5000)
            assert missing.status_code == 404 and "no model named 'nosuch'" in missing.text
            big = client.post(f"{url}/models/churn/predict", content=b"x" * 1001)
            assert big.status_code == 413 and "over 1000 bytes" in big.text

            def unannounced():  # no Content-Length: stopped as it streams in
                yield b"x" * 600
                yield b"x" * 600

            streamed = client.post(f"{url}/models/churn/predict", content=unannounced())
            assert streamed.status_code == 413
            endless_answer = client.post(f"{url}/models/flood/predict", json={})
            assert endless_answer.status_code == 502 and "over 4000 bytes" in endless_answer.text
            assert client.post(f"{url}/models/churn/predict", json={"inputs": {}}).status_code == 200
