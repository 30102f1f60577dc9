"""Smoke runs of the benchmarks that measure the platform's own DAGs and images on the session's stack
(``--reuse-services``), at a tiny size. They run in the suite's third stream, whose session stack they share
(scripts/test_suite.sh); the others are in ``test_benchmarks.py``."""

from __future__ import annotations

import re

from tests.bench.runner import run_bench


def test_train_bench_smoke(embedded_stack):
    """Runs train_model twice on the session's stack, beside the bare fetch + fit + log."""
    out = run_bench("train_bench.py", "--customers", "2000", "--days", "2", stack=embedded_stack)
    assert "training set: 2000 labelled rows x 7 features" in out
    assert "train_model DAG run, first:" in out
    assert "train_model DAG run, second (gate vs a champion):" in out
    assert "gate_model" in out


def test_serving_bench_smoke(embedded_stack):
    """Builds the LightGBM model's image (the one only this benchmark serves: the other tests serve
    scikit-learn models) on the session's Docker engine, loads it with wrk for a second per run."""
    args = ("--duration", "1", "--customers", "3000", "--starts", "1", "--models", "lightgbm")
    out = run_bench("serving_bench.py", *args, stack=embedded_stack)
    assert "== lightgbm (lightgbm), 3000 training rows: image built in" in out and "random_forest" not in out
    assert out.count("labels identical to mlflow models serve: True") == 1
    assert out.count("labels identical to the native model: True") == 1
    assert out.count("ratio req/s") == 4 and out.count("container start -> /health ok: median") == 1
    assert out.count("bare ratio req/s") == 2 and out.count("workers ratio") == 2
    assert out.count("the model alone (ONNX Runtime, same rows, this process)") == 1
    assert out.count("the model ratio of the bare endpoint + model:") == 1  # the bound the stack sets
    assert out.count("workers over asgard's 1 worker(s):") == 2  # the bound wrk on the same cores sets
    assert out.count("the image's CPU per request (all its processes):") == 2
    assert out.count("CPU ratio over the bare endpoint") == 2  # 1 and 100 rows
    assert out.count("100 rows, CPU per request: asgard") == 1 and "the bare endpoint's + the model alone's" in out
    assert out.count("the model inside the server") == 3  # its /metrics, at 1 and 100 rows
    assert out.count("as the deploy target runs it (own network and bridge, limits; the router's way in):") == 1
    assert out.count("network ratio") == 1


def test_serving_by_id_bench_smoke(embedded_stack):
    """One image read by id from SQLite (mounted read-only) and the machine's Redis, a second per load run."""
    out = run_bench(
        "serving_by_id_bench.py", "--duration", "1", "--rounds", "2", "--customers", "2000", stack=embedded_stack
    )
    assert "image without the online reader" in out and "growth" in out
    for store in ("sqlite", "redis"):
        for ids in ("  1 id(s)", "100 id(s)"):
            assert f"{store}, {ids}: by features" in out
    assert out.count("p99 ratio id / features") == 4 and out.count("answers identical: True") == 4


def test_startup_bench_smoke(embedded_stack):
    """Script environments (uv and pip, cold and cached) and serving image builds (this Dockerfile and
    the previous one, and a script model's, first and next version) on the session's Docker engine, at a
    tiny size."""
    # Cold environments come from PyPI and images are built: 137 s alone, over 600 s once on CI's shared
    # cores with another suite beside it.
    out = run_bench("startup_bench.py", "--smoke", stack=embedded_stack, timeout=900)
    assert "uv, environment already built (cached)" in out and "pip, no cache" in out
    assert "ratio new environment, pip no cache / uv:" in out
    assert "sandbox overhead per run, print(1):" in out and "sandbox overhead per run, import six:" in out
    assert "platform Dockerfile, next version" in out and "previous Dockerfile, next version" in out
    assert "ratio next version, previous / platform Dockerfile:" in out
    assert "script model, platform Dockerfile, next version" in out
    assert "ratio first version, script model / train_model model:" in out


def test_soak_bench_smoke(embedded_stack):
    """A serving container of the LightGBM model, then the session's Airflow API server, each under honest
    load alone and then with every hostile case sent beside it: each case gets a 4xx and says what it cost
    the server, no process of either server comes or goes; memory and both p99s are printed."""
    # One 8 s round on cores the other streams load measures that it runs, not the ratio or the server
    # times (100 ms in a full run): their limits are wide.
    args = (
        "--rounds",
        "1",
        "--duration",
        "8",
        "--customers",
        "3000",
        "--max-p99-ratio",
        "50",
        "--max-server-ms",
        "2000",
    )
    out = run_bench("soak_bench.py", *args, stack=embedded_stack)
    serving, api = out.split("== Airflow API server (POST /mlops/monitoring/history)")
    assert "== serving container (1-row /invocations)" in serving
    for part, cases in (
        (serving, ("n² records, 1 MB", "NaN literal", "deep nesting", "1 MB string", "unknown column")),
        (api, ("NaN metric", "deep nesting", "1 MB model name", "unknown field", "1 MB of distinct keys")),
    ):
        assert "memory (its processes' own, no page cache):" in part and "MiB at the end" in part
        assert "honest p99 (median of 1 rounds of 8 s):" in part
        for case in (*cases, "over the limit, chunked"):
            assert re.search(
                rf"  {case}: \d+ sent, statuses \[[\d, ]+\], slowest \S+ ms server time \(\d+ timed\)", part
            ), out
        assert re.search(r"processes: \d+ at the start, the same at the end", part), out
