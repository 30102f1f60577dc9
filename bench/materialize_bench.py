"""Benchmark: the ``materialize_features`` path vs ``feast materialize`` on the same gold table.

For each size the sample gold layer is generated with a fixed number of customers and as many
daily snapshots as the size needs (a longer history, the way a backfill grows), the Feast repo is
applied, and then each path materializes the whole history into its own fresh SQLite online store,
each in a fresh child process so its peak RSS is its own. The two paths alternate, best of
``--repeat`` runs each. Afterwards the two online stores are compared value for value.

    python bench/materialize_bench.py                     # 1M and 4M rows (not part of CI)
    python bench/materialize_bench.py --rows 20000 80000 --customers 2000   # smoke size

Targets (issue 3): throughput ratio (DAG path / feast materialize) >= 1.0 at 1M rows; the DAG
path's peak RSS grows < 20% from the smallest to the largest size.
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
from datetime import timedelta
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
VIEW = "customer_features"


def child(mode: str, online_path: str) -> None:
    """Materialize the whole history with one path; print rows/s and peak RSS as JSON."""
    from asgard.features import materialization
    from asgard.features import store as feature_store
    from sample_data.gold_layer import GoldSpec

    store = feature_store.open_store(online_store={"type": "sqlite", "path": online_path})
    spec = GoldSpec(**json.loads(os.environ["BENCH_SPEC"]))
    start, end = spec.start_time, spec.end_time + timedelta(seconds=1)
    materialization.ensure_online_table(store, store.get_feature_view(VIEW))
    started = time.perf_counter()
    if mode == "dag":
        window = materialization.Window(VIEW, start, end)
        materialization.materialize_window(store, window, progress=lambda _: None)
    else:
        store.materialize(start_date=start, end_date=end, feature_views=[VIEW])
    seconds = time.perf_counter() - started
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"seconds": seconds, "peak_rss_mib": peak_kib / 1024}))


def run_child(mode: str, home: Path, spec: dict, online_path: Path) -> dict:
    online_path.unlink(missing_ok=True)
    env = {
        **os.environ,
        "ASGARD_HOME": str(home),
        "ASGARD_PROFILE": "embedded",
        "BENCH_SPEC": json.dumps(spec),
        "PYTHONPATH": os.pathsep.join([str(REPO / "plugins"), str(REPO / "include")]),
    }
    result = subprocess.run(
        [sys.executable, __file__, "--child", mode, str(online_path)],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise SystemExit(f"{mode} run failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def online_values(path: Path, home: Path, spec: dict) -> dict:
    """Every entity's online feature values from one store (to check both paths agree)."""
    os.environ.update({"ASGARD_HOME": str(home), "ASGARD_PROFILE": "embedded"})
    from asgard.core.settings import Settings
    from asgard.features import store as feature_store

    store = feature_store.open_store(Settings.from_env(), online_store={"type": "sqlite", "path": str(path)})
    view = store.get_feature_view(VIEW)
    rows = [{"customer_id": i} for i in range(1, spec["customers"] + 1)]
    refs = [f"{VIEW}:{feature.name}" for feature in view.features]
    return store.get_online_features(features=refs, entity_rows=rows).to_dict()


def prepare(home: Path, spec: dict) -> None:
    env = {**os.environ, "ASGARD_HOME": str(home), "ASGARD_PROFILE": "embedded"}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "plugins"), str(REPO / "include")])
    code = (
        "from asgard.features import store as feature_store; from asgard.core.settings import Settings;"
        "from sample_data.gold_layer import GoldSpec, write_gold_layer;"
        f"write_gold_layer(GoldSpec(**{spec!r}), log=lambda _: None);"
        "feature_store.apply_repo(Settings.from_env())"
    )
    subprocess.run([sys.executable, "-c", code], env=env, check=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[1_000_000, 4_000_000])
    parser.add_argument("--customers", type=int, default=50_000)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--child", nargs=2, metavar=("MODE", "ONLINE_DB"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(*args.child)
        return 0

    print(f"{'rows':>9} {'path':<18} {'seconds':>8} {'rows/s':>10} {'peak RSS MiB':>13}")
    results: dict[int, dict[str, dict]] = {}
    for rows in args.rows:
        days = max(1, rows // args.customers)
        spec = {"customers": args.customers, "days": days}
        total = args.customers * days
        with tempfile.TemporaryDirectory(prefix="asgard-bench-") as tmp:
            home = Path(tmp)
            prepare(home, spec)
            best: dict[str, dict] = {}
            for _ in range(args.repeat):
                for mode in ("dag", "feast"):
                    measured = run_child(mode, home, spec, home / f"online-{mode}.db")
                    if mode not in best or measured["seconds"] < best[mode]["seconds"]:
                        best[mode] = measured
            for mode, label in (("dag", "materialize_window"), ("feast", "feast materialize")):
                seconds, rss = best[mode]["seconds"], best[mode]["peak_rss_mib"]
                print(f"{total:>9} {label:<18} {seconds:>8.2f} {total / seconds:>10.0f} {rss:>13.0f}")
            if online_values(home / "online-dag.db", home, spec) != online_values(home / "online-feast.db", home, spec):
                raise SystemExit(f"the two paths left different online values at {total} rows")
            results[total] = best
        ratio = best["feast"]["seconds"] / best["dag"]["seconds"]
        print(f"{total:>9} throughput ratio (materialize_window / feast materialize): {ratio:.2f}  (target >= 1.0)")

    sizes = sorted(results)
    if len(sizes) > 1:
        small, large = results[sizes[0]], results[sizes[-1]]
        for mode, label in (("dag", "materialize_window"), ("feast", "feast materialize")):
            growth = large[mode]["peak_rss_mib"] / small[mode]["peak_rss_mib"] - 1
            print(f"peak RSS growth {sizes[0]} -> {sizes[-1]} rows, {label}: {growth:+.0%}")
        print("(target for materialize_window: < +20%)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
