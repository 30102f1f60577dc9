"""Smoke runs of the benchmarks in ``bench/`` at a tiny size: they run end to end and report.

The figures themselves are not asserted (machines here are noisy); each benchmark checks its own
paths agree on the result and exits non-zero otherwise.
"""

from __future__ import annotations

from tests.bench.runner import run_bench


def test_materialize_bench_smoke():
    """Both axes on SQLite and on the machine's Redis, beside Feast, at a tiny size; Feast only up to
    1,000 entities, so the larger layer is checked against the newest gold rows instead. The 1,000 x 1
    layer is the first point of both axes, measured once."""
    args = ("--entities", "1000", "3000", "--rows", "1000", "3000", "--customers", "1000")
    out = run_bench("materialize_bench.py", *args, "--feast-max-entities", "1000")
    for store in ("sqlite", "redis"):
        assert out.count(f"{store}: throughput ratio (asgard / feast materialize):") == 2
        assert f"peak RSS per entity, asgard on {store}, 1000 -> 3000 entities:" in out
        assert f"peak RSS growth 1000 -> 3000 rows at 1000 entities, asgard on {store}:" in out
    assert out.count("identical to feast: True") == 4 and out.count("identical to the newest gold rows: True") == 2
    assert out.count("(the layer measured above)") == 1 and "Materializing" not in out
    assert "asgard (SqliteWriter)" in out and "asgard (RedisWriter)" in out
    for how in ("INSERT ... SELECT in SQLite", "the writer's pipelines, built beforehand"):
        assert out.count(f"the store's own rate ({how}):") == 3  # one per layer


def test_batch_scoring_bench_smoke():
    """Scores a small Parquet file three ways, each in a fresh process, and checks the labels agree."""
    out = run_bench("batch_scoring_bench.py", "--rows", "20000", "--rss-rows", "10000", "20000", "--customers", "2000")
    assert "scorer labels identical to mlflow.pyfunc predict on all 20000 rows: True" in out
    assert "ratio scorer / limit:" in out and "ratio scorer / naive:" in out
    assert "peak RSS growth 10000 -> 20000 rows, scorer:" in out


def test_trino_training_set_bench_smoke():
    """The production profile's S3 and Trino (quick start), a tiny gold layer: the training set through Trino (in
    four passes, put back in the rows' order), Feast's DuckDB store and pandas, each in a fresh process, figures
    printed, the answers identical."""
    out = run_bench("trino_training_set_bench.py", "--entity-rows", "500", "--customers", "600", "--days", "2",
                    "--quick-start", "--trino-rows-per-pass", "150")  # fmt: skip
    assert "== 500 entity rows" in out and "Trino's peak RSS" in out
    for label in ("Feast over Trino (production's path)", "Feast over DuckDB", "pyiceberg + pandas merge_asof"):
        assert f"{label}" in out and " 500 rows" in out.split(label, 1)[1].splitlines()[0], out
    assert "ratio seconds Trino / DuckDB:" in out and "answers identical: True" in out
    assert "entity uploads left in iceberg.feast_uploads: 0" in out


def test_monitoring_bench_smoke():
    """The drift suite against the scipy loop (Evidently's virtualenv is for the full-size run only)."""
    out = run_bench("monitoring_bench.py", "--rows", "20000", "--no-evidently")
    assert "20000 rows x 20 features (15 numeric, 5 categorical)" in out
    assert "ratio scipy / asgard:" in out
    difference = float(out.split("largest difference from scipy over every statistic: ")[1].split()[0])
    assert difference <= 1e-9


def test_training_set_bench_smoke():
    """Both joins, each in a fresh process, on a tiny gold layer: figures printed, rows identical."""
    out = run_bench("training_set_bench.py", "--entity-rows", "300", "--days", "2")
    assert "== 300 entity rows, 600 feature rows (2 days of history)" in out
    assert "Feast get_historical_features" in out and "asgard training_sets (out of core)" in out
    assert "ratio seconds Feast / asgard:" in out and "ratio peak RSS asgard / Feast:" in out
    assert "rows identical to Feast's: True" in out
