"""Benchmark: the ``materialize_features`` path vs ``feast materialize`` on the same gold table.

Two axes, each on SQLite and on a real Redis (its own database index, emptied before each run):

- entities: one gold row per customer, the number of customers grown (100k, 1M, 4M): the rate
  at which entities reach the online store (target: >= 10x Feast's at 1M) and the peak RSS per
  entity;
- rows: a fixed number of customers, the history grown (as a backfill grows): peak RSS must stay
  flat (target: < +20% from the smallest to the largest size).

Each path materializes the whole history into its own fresh online store, in a fresh forked process
so its peak RSS is its own; beside them, the store's own rate for the same rows (the fastest the
store takes them, made beforehand: what no writer can beat). Feast's run is skipped beyond
``--feast-max-entities`` (its memory grows with the entities: several GiB a million). Afterwards
Feast's own ``get_online_features`` reads a sample of entities back from the project's store,
compared value for value with Feast's store (or, where Feast did not run, with the newest gold rows).

    python bench/materialize_bench.py          # entities 100k 1M 4M; rows 1M 4M at 250k customers (not in CI)
    python bench/materialize_bench.py --entities 2000 6000 --rows 2000 6000 --customers 2000 \\
        --feast-max-entities 2000                 # smoke size (the 2,000 x 1 layer serves both axes)
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing
import os
import resource
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from datetime import timedelta
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "plugins"), str(REPO / "include")]
VIEW = "customer_features"
SAMPLE_ENTITIES = 2000


def online_store(kind: str, home: Path, mode: str, redis: str) -> dict:
    if kind == "sqlite":
        return {"type": "sqlite", "path": str(home / f"online-{mode}.db")}
    return {"type": "redis", "connection_string": f"{redis},db={REDIS_DB[mode]}"}


# One Redis database per path, so no two stores mix; emptied before each run.
REDIS_DB = {"dag": 14, "feast": 15, "store": 10}


def child(mode: str, home: str, spec: dict, store: dict) -> dict:
    """Materialize the whole history with one path, in a fresh process: seconds, peak RSS, the writer."""
    os.environ.update({"ASGARD_HOME": home, "ASGARD_PROFILE": "embedded"})
    from asgard.features import materialization
    from asgard.features import store as feature_store
    from asgard.features.online_writer import online_writer
    from sample_data.gold_layer import GoldSpec

    feast_store = feature_store.open_store(online_store=store)
    gold_spec = GoldSpec(**spec)
    start, end = gold_spec.start_time, gold_spec.end_time + timedelta(seconds=1)
    view = feast_store.get_feature_view(VIEW)
    materialization.ensure_online_table(feast_store, view)
    started = time.perf_counter()
    if mode == "dag":
        window = materialization.Window(VIEW, start, end)
        materialization.materialize_window(feast_store, window, progress=lambda _: None)
    else:
        with open(os.devnull, "w") as quiet, contextlib.redirect_stdout(quiet):  # Feast prints its progress
            feast_store.materialize(start_date=start, end_date=end, feature_views=[VIEW])
    seconds = time.perf_counter() - started
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    writer = type(online_writer(feast_store, view)).__name__ if mode == "dag" else "feast"
    return {"seconds": seconds, "peak_rss_mib": peak_kib / 1024, "writer": writer}


def store_rate(home: str, spec: dict, store: dict) -> dict:
    """The store's own rate, in a fresh process: the rows of the project's writer, made beforehand
    and untimed, then written the fastest way the store takes them.

    SQLite: copied from the project's store (written by the ``dag`` run) into a fresh one by one
    ``INSERT ... SELECT``, in SQLite's C, in key order. Redis: the writer's pipelines of ``HSET``s,
    built first, then only sent and their replies read.
    """
    import sqlite3

    os.environ.update({"ASGARD_HOME": home, "ASGARD_PROFILE": "embedded"})
    from asgard.features import materialization
    from asgard.features import store as feature_store
    from asgard.features.online_writer import online_writer
    from sample_data.gold_layer import GoldSpec

    feast_store = feature_store.open_store(online_store=store)
    view = feast_store.get_feature_view(VIEW)
    materialization.ensure_online_table(feast_store, view)
    writer = online_writer(feast_store, view)
    if store["type"] == "sqlite":
        table, order = writer.table, "ORDER BY entity_key, feature_name"
        source = str(Path(store["path"]).with_name("online-dag.db"))
        connection = sqlite3.connect(store["path"])
        connection.execute("ATTACH DATABASE ? AS source", (source,))
        started = time.perf_counter()
        with connection:
            connection.execute(f"INSERT INTO main.{table} SELECT * FROM source.{table} {order}")
        seconds = time.perf_counter() - started
        connection.close()
        return {"seconds": seconds, "how": "INSERT ... SELECT in SQLite"}
    gold_spec = GoldSpec(**spec)
    latest, _, _ = materialization.read_newest(
        feast_store, view, gold_spec.start_time, gold_spec.end_time + timedelta(seconds=1), progress=lambda _: None
    )
    batches = writer.batches(latest, 50_000)
    pipelines = [pipeline for batch, keys in batches for pipeline in writer.pipelines(batch, keys)]
    started = time.perf_counter()
    writer.send(pipelines)
    return {"seconds": time.perf_counter() - started, "how": "the writer's pipelines, built beforehand"}


def write_layer(home: str, spec: dict) -> None:
    """The gold layer and the applied feature repo of one benchmark size, in a fresh process."""
    os.environ.update({"ASGARD_HOME": home, "ASGARD_PROFILE": "embedded"})
    from asgard.core.settings import Settings
    from asgard.features import store as feature_store
    from sample_data.gold_layer import GoldSpec, write_gold_layer

    write_gold_layer(GoldSpec(**spec), log=lambda _: None)
    feature_store.apply_repo(Settings.from_env())


# Each run gets a fresh process, forked from a server that has imported Feast and the project once:
# a forked child's peak RSS starts at its size at the fork (the imports), so each run's peak is its own,
# and no run pays the seconds of importing Feast again.
PRELOAD = [
    "feast",
    "asgard.features.materialization",
    "asgard.features.online_writer",
    "asgard.features.sqlite_writer",
    "sample_data.gold_layer",
]


def fresh_processes() -> ProcessPoolExecutor:
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(PRELOAD)
    return ProcessPoolExecutor(max_workers=1, mp_context=context, max_tasks_per_child=1)


def in_fresh_process(processes: ProcessPoolExecutor, function, *args):
    try:
        return processes.submit(function, *args).result()
    except Exception as error:
        raise SystemExit(f"{function.__name__}{args[:1]} failed: {error!r}") from error


def run_child(processes: ProcessPoolExecutor, mode: str, home: Path, spec: dict, store: dict) -> dict:
    if store["type"] == "sqlite":
        Path(store["path"]).unlink(missing_ok=True)
    else:
        empty_redis(store)
    if mode == "store":
        return in_fresh_process(processes, store_rate, str(home), spec, store)
    return in_fresh_process(processes, child, mode, str(home), spec, store)


def empty_redis(store: dict) -> None:
    import redis

    address, _, database = store["connection_string"].partition(",db=")
    host, _, port = address.partition(":")
    redis.Redis(host=host, port=int(port), db=int(database)).flushdb()


def sample_values(home: Path, spec: dict, store: dict) -> dict:
    """Feast's ``get_online_features`` for a sample of entities (first, last and spread between)."""
    os.environ.update({"ASGARD_HOME": str(home), "ASGARD_PROFILE": "embedded"})
    from asgard.core.settings import Settings
    from asgard.features import store as feature_store

    feast_store = feature_store.open_store(Settings.from_env(), online_store=store)
    view = feast_store.get_feature_view(VIEW)
    step = max(1, spec["customers"] // SAMPLE_ENTITIES)
    ids = sorted({*range(1, spec["customers"] + 1, step), spec["customers"]})
    refs = [f"{VIEW}:{feature.name}" for feature in view.features]
    return feast_store.get_online_features(features=refs, entity_rows=[{"customer_id": i} for i in ids]).to_dict()


def newest_gold_values(home: Path, spec: dict, sampled: dict) -> dict:
    """The newest gold row of each sampled entity, in ``get_online_features``' shape."""
    import math

    os.environ.update({"ASGARD_HOME": str(home), "ASGARD_PROFILE": "embedded"})
    from asgard.features import gold
    from sample_data.gold_layer import FEATURE_TABLE

    rows = gold.load_table(FEATURE_TABLE).scan().to_pandas()
    rows = rows[rows["customer_id"].isin(sampled["customer_id"])]
    latest = rows.sort_values("event_timestamp").drop_duplicates("customer_id", keep="last").set_index("customer_id")
    expected = {"customer_id": sampled["customer_id"]}
    for name in sampled:
        if name != "customer_id":
            values = latest.loc[sampled["customer_id"], name].tolist()
            expected[name] = [None if isinstance(v, float) and math.isnan(v) else v for v in values]
    return expected


def measure(processes: ProcessPoolExecutor, spec: dict, stores: list[str], args: argparse.Namespace) -> dict:
    """Both paths on each store for one gold layer; the sample read back and compared."""
    total = spec["customers"] * spec["days"]
    results: dict[str, dict[str, dict]] = {}
    with tempfile.TemporaryDirectory(prefix="asgard-bench-") as tmp:
        home = Path(tmp)
        in_fresh_process(processes, write_layer, str(home), spec)
        for kind in stores:
            modes = ["dag", "store"] + (["feast"] if spec["customers"] <= args.feast_max_entities else [])
            best: dict[str, dict] = {}
            for _ in range(args.repeat):
                for mode in modes:
                    measured = run_child(processes, mode, home, spec, online_store(kind, home, mode, args.redis))
                    if mode not in best or measured["seconds"] < best[mode]["seconds"]:
                        best[mode] = measured
            ours = sample_values(home, spec, online_store(kind, home, "dag", args.redis))
            if "feast" in best:
                theirs, against = sample_values(home, spec, online_store(kind, home, "feast", args.redis)), "feast"
            else:
                theirs, against = newest_gold_values(home, spec, ours), "the newest gold rows"
            same = ours == theirs
            for mode in modes:
                if mode == "store":
                    continue
                label = {"dag": f"asgard ({best[mode]['writer']})", "feast": "feast materialize"}[mode]
                seconds, rss = best[mode]["seconds"], best[mode]["peak_rss_mib"]
                print(
                    f"{spec['customers']:>9} {total:>9} {kind:<7} {label:<24} {seconds:>8.2f} "
                    f"{spec['customers'] / seconds:>11.0f} {total / seconds:>10.0f} {rss:>9.0f}",
                    flush=True,
                )
            if "feast" not in best:
                print(f"{'':>9} {'':>9} {kind:<7} feast materialize        not run (beyond --feast-max-entities)")
            print(
                f"{'':>19} {kind}: {len(ours['customer_id'])} sampled entities read back by Feast's "
                f"get_online_features, identical to {against}: {same}",
                flush=True,
            )
            if not same:
                raise SystemExit(f"{kind}: the online values differ from {against} at {spec}")
            own = best["store"]
            print(
                f"{'':>19} {kind}: the store's own rate ({own['how']}): {spec['customers'] / own['seconds']:.0f} "
                f"entities/s in {own['seconds']:.2f} s; asgard's whole run, reading the gold layer included, "
                f"at {own['seconds'] / best['dag']['seconds']:.0%} of it",
                flush=True,
            )
            if "feast" in best:
                ratio = best["feast"]["seconds"] / best["dag"]["seconds"]
                print(
                    f"{'':>19} {kind}: throughput ratio (asgard / feast materialize): {ratio:.1f}x "
                    "(target >= 10x at 1M entities)",
                    flush=True,
                )
            results[kind] = best
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entities", type=int, nargs="*", default=[100_000, 1_000_000, 4_000_000])
    parser.add_argument("--rows", type=int, nargs="*", default=[1_000_000, 4_000_000])
    parser.add_argument("--customers", type=int, default=250_000, help="entities of the rows axis")
    parser.add_argument("--stores", nargs="+", default=["sqlite", "redis"], choices=["sqlite", "redis"])
    parser.add_argument("--redis", default="127.0.0.1:6379", help="host:port of a Redis (databases 14 and 15)")
    parser.add_argument("--feast-max-entities", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=1)
    args = parser.parse_args(argv)

    header = f"{'entities':>9} {'rows':>9} {'store':<7} {'path':<24} {'seconds':>8} {'entities/s':>11} "
    print(header + f"{'rows/s':>10} {'peak MiB':>9}")
    measured: dict[tuple[int, int], dict] = {}  # a layer on both axes (rows axis at one day) is measured once

    def layer(processes: ProcessPoolExecutor, customers: int, days: int) -> dict:
        if (customers, days) not in measured:
            measured[customers, days] = measure(processes, {"customers": customers, "days": days}, args.stores, args)
        else:
            print(f"{customers:>9} {customers * days:>9} (the layer measured above)")
        return measured[customers, days]

    with fresh_processes() as processes:
        by_entities = {count: layer(processes, count, 1) for count in args.entities}
        by_rows = {rows: layer(processes, args.customers, max(1, rows // args.customers)) for rows in args.rows}
    if len(by_entities) > 1:
        small, large = min(by_entities), max(by_entities)
        for kind in args.stores:
            grown = by_entities[large][kind]["dag"]["peak_rss_mib"] - by_entities[small][kind]["dag"]["peak_rss_mib"]
            per_entity = grown * 2**20 / (large - small)
            print(f"peak RSS per entity, asgard on {kind}, {small} -> {large} entities: {per_entity:.0f} bytes")
    if len(by_rows) > 1:
        small, large = min(by_rows), max(by_rows)
        for kind in args.stores:
            for mode, label in (("dag", "asgard"), ("feast", "feast materialize")):
                if mode in by_rows[small][kind] and mode in by_rows[large][kind]:
                    growth = by_rows[large][kind][mode]["peak_rss_mib"] / by_rows[small][kind][mode]["peak_rss_mib"]
                    print(
                        f"peak RSS growth {small} -> {large} rows at {args.customers} entities, {label} on {kind}: "
                        f"{growth - 1:+.0%}"
                    )
        print("(target for asgard: < +20%)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
