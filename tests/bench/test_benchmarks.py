"""Smoke runs of the benchmarks in ``bench/`` at a tiny size: they run end to end and report.

The figures themselves are not asserted (machines here are noisy); each benchmark checks its own
paths agree on the result and exits non-zero otherwise.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def run_bench(script: str, *args: str, stack=None) -> str:
    """Run a benchmark; with ``stack``, against the session's running services (``--reuse-services``)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "plugins"), str(REPO / "include")])}
    if stack is not None:
        env.update(stack.settings.as_env())
        args = (*args, "--reuse-services")
    result = subprocess.run(
        [sys.executable, str(REPO / "bench" / script), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_materialize_bench_smoke():
    """Both axes on SQLite and on the machine's Redis, beside Feast, at a tiny size; Feast only up to
    2,000 entities, so the larger layer is checked against the newest gold rows instead. The 2,000 x 1
    layer is the first point of both axes, measured once."""
    args = ("--entities", "2000", "6000", "--rows", "2000", "6000", "--customers", "2000")
    out = run_bench("materialize_bench.py", *args, "--feast-max-entities", "2000")
    for store in ("sqlite", "redis"):
        assert out.count(f"{store}: throughput ratio (asgard / feast materialize):") == 2
        assert f"peak RSS per entity, asgard on {store}, 2000 -> 6000 entities:" in out
        assert f"peak RSS growth 2000 -> 6000 rows at 2000 entities, asgard on {store}:" in out
    assert out.count("identical to feast: True") == 4 and out.count("identical to the newest gold rows: True") == 2
    assert out.count("(the layer measured above)") == 1 and "Materializing" not in out
    assert "asgard (SqliteWriter)" in out and "asgard (RedisWriter)" in out
    for how in ("INSERT ... SELECT in SQLite", "the writer's pipelines, built beforehand"):
        assert out.count(f"the store's own rate ({how}):") == 3  # one per layer


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


def test_batch_scoring_bench_smoke():
    """Scores a small Parquet file three ways, each in a fresh process, and checks the labels agree."""
    out = run_bench("batch_scoring_bench.py", "--rows", "20000", "--rss-rows", "10000", "20000", "--customers", "2000")
    assert "scorer labels identical to mlflow.pyfunc predict on all 20000 rows: True" in out
    assert "ratio scorer / limit:" in out and "ratio scorer / naive:" in out
    assert "peak RSS growth 10000 -> 20000 rows, scorer:" in out


def test_monitoring_bench_smoke():
    """The drift suite against the scipy loop (Evidently's virtualenv is for the full-size run only)."""
    out = run_bench("monitoring_bench.py", "--rows", "20000", "--no-evidently")
    assert "20000 rows x 20 features (15 numeric, 5 categorical)" in out
    assert "ratio scipy / asgard:" in out
    difference = float(out.split("largest difference from scipy over every statistic: ")[1].split()[0])
    assert difference <= 1e-9


def test_startup_bench_smoke(embedded_stack):
    """Script environments (uv and pip, cold and cached) and serving image builds (this Dockerfile and
    the previous one, and a script model's, first and next version) on the session's Docker engine, at a
    tiny size."""
    out = run_bench("startup_bench.py", "--smoke", stack=embedded_stack)
    assert "uv, environment already built (cached)" in out and "pip, no cache" in out
    assert "ratio new environment, pip no cache / uv:" in out
    assert "sandbox overhead per run, print(1):" in out and "sandbox overhead per run, import six:" in out
    assert "platform Dockerfile, next version" in out and "previous Dockerfile, next version" in out
    assert "ratio next version, previous / platform Dockerfile:" in out
    assert "script model, platform Dockerfile, next version" in out
    assert "ratio first version, script model / train_model model:" in out


def test_training_set_bench_smoke():
    """Both joins, each in a fresh process, on a tiny gold layer: figures printed, rows identical."""
    out = run_bench("training_set_bench.py", "--entity-rows", "300", "--days", "2")
    assert "== 300 entity rows, 600 feature rows (2 days of history)" in out
    assert "Feast get_historical_features" in out and "asgard training_sets (out of core)" in out
    assert "ratio seconds Feast / asgard:" in out and "ratio peak RSS asgard / Feast:" in out
    assert "rows identical to Feast's: True" in out
