"""Training sets in production: Feast over Trino vs Feast over DuckDB vs pyiceberg + pandas, side by side.

Starts the production profile's S3 (moto) and Trino under a scratch home (the machine's PostgreSQL holds the
gold catalog and Feast's registry, in databases of a prefix of their own, dropped at the end), writes the
sample gold layer (``--customers``, ``--days`` of daily feature snapshots) and applies the feature repo.
For each ``--entity-rows`` size, the first rows of the label table are the entity rows, and each join runs
in a fresh process of its own:

- ``trino``: the platform's path in production (``training_sets.get_historical_features`` over the profile's
  offline store: Feast's Trino store over the Iceberg tables, the entity rows uploaded as an Iceberg table,
  in passes of 100k rows). Its process is a client: Trino's RSS is sampled beside it.
- ``duckdb``: Feast's own DuckDB offline store over the same tables (``ASGARD_OFFLINE_STORE=duckdb``).
- ``pandas``: the feature table scanned by pyiceberg and ``pandas.merge_asof`` (Feast's rule: the newest row
  at or before the entity's time, within the view's ttl; ties broken by the created timestamp).

Prints seconds and peak RSS of each, Trino's peak RSS during its join, the ratios, and checks that the three
answers are identical (exit 1 otherwise).

    python bench/trino_training_set_bench.py                      # 100k and 1M entity rows, 7 days
    python bench/trino_training_set_bench.py --entity-rows 2000 --customers 2000 --days 2 --quick-start
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
for folder in (REPO / "include", REPO / "plugins", REPO / "bench"):
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))

from common import exit_code, free_port  # noqa: E402

HOW = {
    "trino": "Feast over Trino (production's path)",
    "duckdb": "Feast over DuckDB",
    "pandas": "pyiceberg + pandas merge_asof",
}
KEYS = ["customer_id", "event_timestamp"]


def feature_refs() -> list[str]:
    from sample_data.models import SAMPLE_FEATURES

    return [f"customer_features:{name}" for name in SAMPLE_FEATURES]


def entity_rows(rows: int):
    from asgard.features import gold
    from sample_data.gold_layer import LABEL_TABLE

    labels = gold.load_table(LABEL_TABLE).scan(selected_fields=tuple(KEYS), limit=rows).to_pandas()
    return labels.reset_index(drop=True)


def pandas_join(entities, features: list[str]):
    """Feast's point-in-time rule with pyiceberg and pandas: the newest feature row not after each entity row's
    time and within the view's ttl (the newest created timestamp first among rows of one time)."""
    import pandas as pd

    from asgard.features import gold
    from asgard.features import store as feature_store

    view = feature_store.open_store().get_feature_view("customer_features")
    source = view.batch_source
    order = [source.timestamp_field, *([source.created_timestamp_column] if source.created_timestamp_column else [])]
    names = [ref.split(":", 1)[1] for ref in features]
    history = gold.load_table(source.iceberg_table).scan(selected_fields=("customer_id", *names, *order)).to_pandas()
    history = history.sort_values(order, kind="stable").drop_duplicates(["customer_id", order[0]], keep="last")
    history = history.rename(columns={order[0]: "_feature_time"}).drop(columns=order[1:])
    left = entities.assign(_row=range(len(entities))).sort_values("event_timestamp", kind="stable")
    joined = pd.merge_asof(
        left, history.sort_values("_feature_time", kind="stable"), left_on="event_timestamp",
        right_on="_feature_time", by="customer_id", direction="backward", tolerance=view.ttl or None,
    )  # fmt: skip
    return joined.sort_values("_row").drop(columns=["_row", "_feature_time"]).reset_index(drop=True)


def join(how: str, rows: int, output: Path, rows_per_pass: int | None = None) -> None:
    """One join in this (fresh) process; its answer to ``output``, its figures as JSON on stdout."""
    from asgard.features import store as feature_store

    entities = entity_rows(rows)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.perf_counter()
    if how == "pandas":
        joined = pandas_join(entities, feature_refs())
    elif how == "trino":  # the platform's path (train_model's, score_batch's): passes in key order
        from asgard.features import training_sets

        store = feature_store.open_store()
        joined = training_sets.get_historical_features(store, entities, feature_refs(), rows_per_pass=rows_per_pass)
    else:
        store = feature_store.open_store()
        joined = store.get_historical_features(entity_df=entities, features=feature_refs()).to_df()
    seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    joined.to_parquet(output)
    print(json.dumps({"seconds": seconds, "peak_kib": peak, "before_kib": before, "rows": len(joined)}))


class RssSampler:
    """The peak RSS of a process tree (Trino's JVM), sampled every 0.2 s while in use."""

    def __init__(self, pids: set[int]) -> None:
        import psutil

        self.processes = [psutil.Process(pid) for pid in pids]
        self.peak = self.rss()
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._sample, daemon=True)

    def rss(self) -> int:
        import psutil

        total = 0
        for process in self.processes:
            for member in (process, *process.children(recursive=True)):
                with contextlib.suppress(psutil.Error):  # a child gone meanwhile
                    total += member.memory_info().rss
        return total

    def _sample(self) -> None:
        while not self.done.wait(0.2):
            self.peak = max(self.peak, self.rss())

    def __enter__(self) -> RssSampler:
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.done.set()
        self.thread.join()


def run_join(how: str, rows: int, output: Path, env: dict[str, str], rows_per_pass: int | None) -> dict:
    command = [sys.executable, __file__, "--join", how, "--rows", str(rows), "--output", str(output)]
    command += ["--trino-rows-per-pass", str(rows_per_pass)] if rows_per_pass else []
    result = subprocess.run(command, capture_output=True, text=True, check=False, env=env)
    if result.returncode != 0:
        raise SystemExit(f"{how} join failed ({result.returncode}):\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def comparable(path: Path, *, in_key_order: bool = True):
    import pandas as pd

    frame = pd.read_parquet(path)
    for column in frame.columns:
        if pd.api.types.is_datetime64_any_dtype(frame[column]):
            frame[column] = pd.to_datetime(frame[column], utc=True).astype("datetime64[us, UTC]")
    frame = frame[KEYS + sorted(set(frame.columns) - set(KEYS))]
    return frame.sort_values(KEYS, kind="stable").reset_index(drop=True) if in_key_order else frame


def differences(files: dict[str, Path]) -> list[str]:
    import pandas as pd

    reference = comparable(files["duckdb"])
    found = []
    for how in ("trino", "pandas"):
        try:
            pd.testing.assert_frame_equal(comparable(files[how]), reference, check_dtype=False)
        except AssertionError as error:
            found.append(f"{how} differs from Feast over DuckDB: {str(error)[:1500]}")
    # The platform's path keeps the entity rows' order (pandas' answer is in it), through its passes too.
    in_order = [comparable(files[how], in_key_order=False)[KEYS] for how in ("trino", "pandas")]
    if not in_order[0].equals(in_order[1]):
        found.append("Trino's answer is not in the entity rows' order")
    return found


def production_stack(scratch: Path, quick_start: bool):
    from asgard.core.settings import Settings
    from asgard.local.production import ProductionServices

    ports = ("airflow_port", "mlflow_port", "registry_port", "router_port", "s3_port", "trino_port")
    settings = Settings(
        home=scratch / "home", profile="production", database_prefix=f"asgard_b{uuid.uuid4().hex[:8]}",
        trino_quick_start=quick_start, **{port: free_port() for port in ports},
    )  # fmt: skip
    base = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "ASGARD"))} | settings.as_env()
    return settings, ProductionServices(settings, base_env=base), base


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entity-rows", type=int, nargs="+", default=[100_000, 1_000_000], help="sizes")
    parser.add_argument("--customers", type=int, help="customers of the gold layer (default: the largest size)")
    parser.add_argument("--days", type=int, default=7, help="daily feature snapshots per customer (history)")
    parser.add_argument("--quick-start", action="store_true", help="Trino on the client compiler (smoke runs)")
    parser.add_argument("--trino-rows-per-pass", type=int, help="entity rows per Trino query (default: the platform's)")
    parser.add_argument("--join", choices=list(HOW), help=argparse.SUPPRESS)
    parser.add_argument("--rows", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--output", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.join:
        join(args.join, args.rows, args.output, args.trino_rows_per_pass)
        return 0

    from asgard.features import gold
    from asgard.features import store as feature_store
    from asgard.features.trino_uploads import UPLOAD_NAMESPACE
    from sample_data.gold_layer import GoldSpec, write_gold_layer

    customers = args.customers or max(args.entity_rows)
    failures: list[str] = []
    with tempfile.TemporaryDirectory(prefix="asgard-trino-bench-") as folder:
        scratch = Path(folder)
        settings, services, base = production_stack(scratch, args.quick_start)
        try:
            started = time.perf_counter()
            services.start(["s3", "trino"], log=lambda _: None)
            print(f"== S3 and Trino started in {time.perf_counter() - started:.1f} s")
            env = base | services.platform_env()
            os.environ.update(env)
            started = time.perf_counter()
            write_gold_layer(GoldSpec(customers=customers, days=args.days), gold.GoldLocation.for_settings(settings),
                             log=lambda _: None)  # fmt: skip
            feature_store.apply_repo(settings)
            print(f"== gold layer of {customers} customers x {args.days} days ({customers * args.days} feature rows) "
                  f"on S3 and the feature repo in {time.perf_counter() - started:.1f} s")  # fmt: skip
            trino_pids = services.leader_pids(["trino"])
            for rows in args.entity_rows:
                print(f"== {rows} entity rows")
                figures, files = {}, {}
                for how, label in HOW.items():
                    files[how] = scratch / f"{how}-{rows}.parquet"
                    how_env = env | ({"ASGARD_OFFLINE_STORE": "duckdb"} if how == "duckdb" else {})
                    with RssSampler(trino_pids) as trino:
                        figures[how] = f = run_join(how, rows, files[how], how_env, args.trino_rows_per_pass)
                    server = f"   Trino's peak RSS {trino.peak / 2**20:6.0f} MiB" if how == "trino" else ""
                    print(f"  {label:40s} {f['seconds']:8.2f} s   peak RSS {f['peak_kib'] / 1024:6.0f} MiB{server}"
                          f"   {f['rows']} rows", flush=True)  # fmt: skip
                    if how == "trino":
                        figures["trino_server_kib"] = trino.peak / 1024
                trino, duckdb, plain = figures["trino"], figures["duckdb"], figures["pandas"]
                print(f"  ratio seconds Trino / DuckDB: {trino['seconds'] / duckdb['seconds']:.2f}x;"
                      f" Trino / pandas: {trino['seconds'] / plain['seconds']:.2f}x")  # fmt: skip
                together = trino["peak_kib"] + figures["trino_server_kib"]
                print(f"  ratio peak RSS (Trino's client + server) / DuckDB: {together / duckdb['peak_kib']:.2f};"
                      f" pandas / DuckDB: {plain['peak_kib'] / duckdb['peak_kib']:.2f}")  # fmt: skip
                found = differences(files)
                print(f"  answers identical: {not found}")
                left = gold.load_catalog().list_tables(UPLOAD_NAMESPACE)
                print(f"  entity uploads left in iceberg.{UPLOAD_NAMESPACE}: {len(left)}")
                if left:
                    found.append(f"uploads left behind: {left}")
                failures += [f"{rows} entity rows: {difference}" for difference in found]
        finally:
            services.stop(log=lambda _: None)
            services.drop_databases()
    return exit_code(failures)


if __name__ == "__main__":
    sys.exit(main())
