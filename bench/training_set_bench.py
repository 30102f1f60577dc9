"""Training sets: the out-of-core point-in-time join against Feast's ``get_historical_features``.

For each size, a scratch home gets the sample gold layer (``--customers`` = entity rows, ``--days``
of daily feature snapshots: the history) and the feature repo; then each join runs in a fresh
process of its own, so its peak RSS is its own: the label table's rows joined with
``customer_features`` as of each label's time, by Feast (DuckDB offline store over Iceberg) and by
``asgard.features.training_sets``. Prints seconds and peak RSS of each and the ratios, and checks
the two answers are identical row for row (exit 1 otherwise).

    python bench/training_set_bench.py                       # 1,000,000 entity rows, 7 days
    python bench/training_set_bench.py --entity-rows 20000 100000 --days 14
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
for folder in (REPO / "include", REPO / "plugins"):
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))

ROW_ID = "bench_row"


def feature_refs() -> list[str]:
    from sample_data.models import SAMPLE_FEATURES

    return [f"customer_features:{name}" for name in SAMPLE_FEATURES]


def prepare(home: Path, customers: int, days: int) -> float:
    """The gold layer and the feature repo under ``home``; seconds taken."""
    started = time.perf_counter()
    os.environ["ASGARD_HOME"] = str(home)
    from asgard.features import store as feature_store
    from sample_data.gold_layer import GoldSpec, write_gold_layer

    write_gold_layer(GoldSpec(customers=customers, days=days), log=lambda _: None)
    feature_store.apply_repo()
    return time.perf_counter() - started


def join(home: Path, how: str, output: Path, memory_limit: str) -> None:
    """One join in this (fresh) process; its answer to ``output``, its figures as JSON on stdout."""
    os.environ["ASGARD_HOME"] = str(home)
    import numpy as np

    from asgard.features import gold, training_sets
    from asgard.features import store as feature_store
    from sample_data.gold_layer import LABEL_TABLE

    store = feature_store.open_store()
    labels = gold.load_table(LABEL_TABLE).scan().to_pandas()
    labels[ROW_ID] = np.arange(len(labels))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.perf_counter()
    if how == "feast":
        joined = store.get_historical_features(entity_df=labels, features=feature_refs()).to_df()
    else:
        joined = training_sets.get_historical_features(store, labels, feature_refs(), memory_limit=memory_limit)
    seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    joined.to_parquet(output)
    print(json.dumps({"seconds": seconds, "peak_kib": peak, "before_kib": before, "rows": len(joined)}))


def run_join(home: Path, how: str, output: Path, memory_limit: str) -> dict:
    command = [sys.executable, __file__, "--join", how, "--home", str(home), "--output", str(output)]
    command += ["--memory-limit", memory_limit]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise SystemExit(f"{how} join failed ({result.returncode}):\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def identical(feast_file: Path, asgard_file: Path) -> tuple[bool, str]:
    import pandas as pd

    feast = pd.read_parquet(feast_file).sort_values(ROW_ID, kind="stable").reset_index(drop=True)
    asgard = pd.read_parquet(asgard_file)
    try:
        pd.testing.assert_frame_equal(asgard, feast, check_exact=True)
    except AssertionError as error:
        return False, str(error)[:2000]
    return True, ""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entity-rows", type=int, nargs="+", default=[1_000_000], help="sizes (customers)")
    parser.add_argument("--days", type=int, default=7, help="daily feature snapshots per customer (history)")
    parser.add_argument("--memory-limit", default="256MB", help="DuckDB's memory limit for the out-of-core join")
    parser.add_argument("--keep", type=Path, help="generate under this folder and keep it (reused when present)")
    parser.add_argument("--join", choices=["feast", "asgard"], help=argparse.SUPPRESS)
    parser.add_argument("--home", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--output", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.join:
        join(args.home, args.join, args.output, args.memory_limit)
        return 0

    failures = []
    for size in args.entity_rows:
        with tempfile.TemporaryDirectory(prefix="asgard-training-set-bench-") as scratch:
            home = (args.keep / f"{size}x{args.days}") if args.keep else Path(scratch) / "home"
            seconds = prepare(home, size, args.days)
            print(f"== {size} entity rows, {size * args.days} feature rows ({args.days} days of history)")
            print(f"  gold layer and feature repo ready in {seconds:.1f} s")
            figures = {}
            for how in ("feast", "asgard"):
                figures[how] = run_join(home, how, Path(scratch) / f"{how}.parquet", args.memory_limit)
                f = figures[how]
                label = "Feast get_historical_features" if how == "feast" else "asgard training_sets (out of core)"
                print(
                    f"  {label:38s} {f['seconds']:8.2f} s   peak RSS {f['peak_kib'] / 1024:8.0f} MiB"
                    f"   (before the join {f['before_kib'] / 1024:.0f} MiB)   {f['rows']} rows"
                )
            feast, asgard = figures["feast"], figures["asgard"]
            print(f"  ratio seconds Feast / asgard: {feast['seconds'] / asgard['seconds']:.2f}x")
            print(f"  ratio peak RSS asgard / Feast: {asgard['peak_kib'] / feast['peak_kib']:.2f}")
            same, detail = identical(Path(scratch) / "feast.parquet", Path(scratch) / "asgard.parquet")
            print(f"  rows identical to Feast's: {same}")
            if not same:
                failures.append(f"{size} entity rows: answers differ: {detail}")
    if failures:
        print("FAILED: " + "; ".join(failures))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
