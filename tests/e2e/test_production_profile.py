"""The production profile on this machine, as a user runs it: ./asgard run --profile production.

Airflow's components as separate processes on the CeleryExecutor (two workers that share no
folder), the metadata database, MLflow's store, Feast's registry and the gold catalog in PostgreSQL,
the broker and the online store on Redis, MLflow's artifacts, the gold warehouse, the runs' files
and the task logs in S3 (moto's server): the main job passes with the same stages, the batch's
partitions land on both workers, and a stop leaves nothing running.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import subprocess
import time
import uuid
from pathlib import Path

import psutil
import pytest
import redis

from asgard.local.examples import BATCH_REQUEST, FRAMEWORK_PARAMS, example_upload, framework_request
from asgard.training.scripts.run_folders import run_key
from conftest import free_port
from e2e.stages import PIPELINE_STAGES, asgard

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.integration


@pytest.fixture
def production_env(tmp_path, machine_to_itself):
    from asgard.core.settings import Settings
    from asgard.local.production import ProductionServices

    settings = Settings(
        home=tmp_path / "home",
        profile="production",
        database_prefix=f"asgard_t{uuid.uuid4().hex[:8]}",
        # Databases of the machine's Redis that no other test or benchmark uses (they empty theirs).
        broker_redis_db=8,
        online_redis_db=9,
        airflow_port=free_port(),
        mlflow_port=free_port(),
        registry_port=free_port(),
        router_port=free_port(),
        s3_port=free_port(),
        trino_port=free_port(),
        # Trino on the client compiler: 9 CPU-seconds to start instead of 22; this test's queries are small.
        trino_quick_start=True,
        data_roots="",  # production's own (S3), not the suite's temporary folders
        # The lost worker's task fails (and is retried) half a minute after its last heartbeat, not a
        # whole one: heartbeats come every 5 s, so a busy machine still has room.
        lost_task_timeout=30,
    )
    # What the user's shell holds: these settings, none of the suite's own Airflow configuration.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "ASGARD"))} | settings.as_env()
    services = ProductionServices(settings, base_env=env)
    for database in (settings.broker_redis_db, settings.online_redis_db):  # nothing left by an earlier run
        redis.Redis.from_url(f"{settings.redis_url}/{database}").flushdb()
    try:
        yield env, services
    finally:
        asgard("stop", "--profile", "production", env=env, timeout=300)
        services.drop_databases()


# The run alone took 700 s on an idle machine and past 1200 s beside the two other streams of the suite (CI,
# two cores): its bound leaves room for that, and the test's for its checks after it.
@pytest.mark.timeout(2400)
def test_the_main_job_runs_on_the_production_profile(production_env, tmp_path, monkeypatch):
    import boto3
    import psycopg

    from asgard.hooks.airflow_api import AirflowApi

    env, services = production_env
    run = asgard("run", "--profile", "production", "--customers", "200", "--days", "4", env=env, timeout=2000)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-3000:]
    out = run.stdout
    assert f"postgres: role {services.settings.database_prefix}" in out
    assert "memory pool asgard_memory: " in out  # made in PostgreSQL's metadata database too
    # check_platform queried Trino's catalogs (the gold layer's is among them); the query id is Trino's.
    checked = re.search(r"trino: (\d+) at (\S+), catalogs (.*) \(query (\S+)\)", out)
    assert checked and checked.group(2) == services.settings.trino_url, out[:4000]
    assert "iceberg" in checked.group(3).split(", "), checked.group(0)
    # The platform's gold reads went through Trino: register_features' check of the table (its
    # information_schema) and each train_model run's training set (Feast's point-in-time join), each with
    # the ids of the queries Trino ran for it (listed in system.runtime.queries: checked below).
    validated = re.search(
        r"register_features\.validate_request: feature validation read through Trino \(queries (.*)\)", out
    )
    trained = re.findall(r"train_model\.build_training_set: training set read through Trino \(queries (.*)\)", out)
    assert validated and len(trained) == len(FRAMEWORK_PARAMS), out[:6000]
    read_queries = [*validated.group(1).split(", "), *(query for line in trained for query in line.split(", "))]
    for stage in ("start production services", *PIPELINE_STAGES):
        assert f"==> {stage}" in out, stage
    # Eight partitions scored by both workers, published once to S3 (the default team's folder of the data root).
    bucket = services.settings.s3_bucket
    assert f"batch predictions: s3://{bucket}/data/default/predictions/batch.parquet: 200 rows" in out, out[-3000:]
    partitions = re.search(r"batch partitions: (.*)", out).group(1)
    assert len(re.findall(r"score_partition\[partition \d", partitions)) == 8, partitions
    assert "on worker-1" in partitions and "on worker-2" in partitions, partitions
    # The user script trained through Feast, with the reader's login through its doors.
    assert re.search(r"script model: churn_predictor_feast v\d+ -> @champion", out), out[-3000:]

    status = asgard("status", "--profile", "production", env=env)
    expected = ("s3", "trino", "mlflow", "docker", "registry", "router", "api-server", "scheduler",
                "dag-processor", "triggerer", "worker-1", "worker-2")  # fmt: skip
    lines = {line.split()[0]: line for line in status.stdout.splitlines() if line and not line.startswith("Airflow")}
    assert all(" healthy " in lines[name] for name in expected), status.stdout
    pids = [int(lines[name].split("pid ")[1].split()[0]) for name in expected]
    family = [p for pid in pids for p in (psutil.Process(pid), *psutil.Process(pid).children(recursive=True))]

    api = AirflowApi.login(services.settings.airflow_url, *services.admin_credentials())
    run_id = api.list_run_ids("score_batch", newest_first=True)[0]
    # Task logs come from S3, not from a worker's folder.
    log = api.task_log("score_batch", run_id, "score_partition", map_index=0)
    assert f"s3://{bucket}/airflow-logs/dag_id=score_batch" in log, log[:2000]
    # Airflow's metadata and MLflow's store are PostgreSQL; MLflow's artifacts and the runs' files, S3.
    with psycopg.connect(services.database_url("airflow", driver="postgresql")) as connection:
        assert connection.execute("SELECT count(*) FROM dag_run WHERE dag_id = 'train_model'").fetchone()[0] >= 4
    with psycopg.connect(services.database_url("mlflow", driver="postgresql")) as connection:
        assert connection.execute("SELECT count(*) FROM model_versions").fetchone()[0] >= 5
    keys = services.aws_environment()
    s3 = boto3.client(
        "s3", endpoint_url=services.settings.s3_url, region_name="us-east-1",
        aws_access_key_id=keys["AWS_ACCESS_KEY_ID"], aws_secret_access_key=keys["AWS_SECRET_ACCESS_KEY"],
    )  # fmt: skip
    for prefix in ("mlflow/", "runs/train_model/", "gold/", "airflow-logs/"):
        assert s3.list_objects_v2(Bucket=bucket, Prefix=prefix)["KeyCount"] > 0, prefix
    # The broker is the profile's own Redis db; the reader role may read, not write.
    assert redis.Redis.from_url(f"{services.settings.redis_url}/{services.settings.broker_redis_db}").ping()
    reader = services.store_access()
    server = f"{reader.postgres_host}:{reader.postgres_port}"
    url = f"postgresql://{reader.user}:{reader.password}@{server}/{reader.gold_database}"
    with psycopg.connect(url) as connection:
        assert connection.execute("SELECT count(*) FROM iceberg_tables").fetchone()[0] == 2
        catalogs = {row[0] for row in connection.execute("SELECT catalog_name FROM iceberg_tables")}
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            connection.execute("DELETE FROM iceberg_tables")
    # Trino's JDBC catalog, made from the same settings, finds those tables: same database, same catalog name.
    trino = asgard("trino-catalog", "--profile", "production", env=env)
    properties = dict(line.split("=", 1) for line in trino.stdout.splitlines())
    assert properties["iceberg.jdbc-catalog.connection-url"].endswith(f"/{reader.gold_database}")
    assert {properties["iceberg.jdbc-catalog.catalog-name"]} == catalogs
    # And the profile's Trino, started with that catalog, reads them (Feast's training sets too).
    trino_config = read_through_trino(services, monkeypatch, [checked.group(4), *read_queries])
    api.unpause("train_model")
    # A hostile script through the real train_script DAG (issue 50): PostgreSQL startups past its door (as the
    # superuser, the admin login, the owner) and Redis, the broker beside the features. It runs to its end
    # before a host is lost below: a host killed after its task reported success but before the worker sent
    # the task's log to S3 leaves that log on its own disk only (seen in CI: no PROBE line read).
    probe_conf = example_upload(
        model_name="pg_probe", script_name="pg_probe.py", requirements=[], timeout=120,
        script_content=base64.b64encode(PG_PROBE.encode()).decode(),
        env_vars={"PROBE_USERS": f"postgres,asgard_admin,{services.settings.database_prefix}"},
    )  # fmt: skip
    probe = api.trigger("train_script", probe_conf)
    probed = api.wait_for_run("train_script", probe, timeout=600)
    probe_log = api.task_log("train_script", probe, "run_script")
    assert probed.task_states["run_script"] == "success", probe_log[-3000:]
    # A worker host lost mid-task (its whole process tree killed): the task is retried on the other worker,
    # and the run ends with one MLflow run and one model version.
    training = api.trigger("train_model", framework_request("sklearn", FRAMEWORK_PARAMS["sklearn"]))
    victim = wait_for_running(api, "train_model", training, "fit_model")
    kill_host(lines[victim])
    outcome = api.wait_for_run("train_model", training, timeout=600)
    assert outcome.state == "success", outcome
    fit = next(ti for ti in api.task_instances.get_task_instances("train_model", training).task_instances
               if ti.task_id == "fit_model")  # fmt: skip
    # Retried (on the other worker, or on the lost host's worker once its supervisor brought it back).
    assert fit.try_number == 2, (fit.try_number, fit.hostname)
    with psycopg.connect(services.database_url("mlflow", driver="postgresql")) as connection:
        runs = connection.execute(
            "SELECT count(*) FROM tags WHERE key = 'airflow.run_id' AND value = %s", (training,)
        ).fetchone()[0]
        assert runs == 1
    decision = api.task_result("train_model", training, "gate_model")
    answers = dict(line.split("PROBE ", 1)[1].split(": ", 1) for line in probe_log.splitlines() if "PROBE " in line)
    for user in ("postgres", "asgard_admin", services.settings.database_prefix):
        answer = answers.get(f"postgres as {user}", "")
        assert "asgard door: the feature store's door lets in only" in answer, (answers, probe_log[-3000:])
    assert answers.get("redis", "").startswith(("ConnectionRefusedError", "OSError", "TimeoutError")), answers
    assert decision["version"]
    # The run's files on S3 are one of each (a retry rewrites, never adds).
    folder = f"runs/train_model/{run_key('train_model', training)}/"  # named by a digest of the raw run id
    stored = sorted(item["Key"] for item in s3.list_objects_v2(Bucket=bucket, Prefix=folder)["Contents"])
    assert stored == [f"{folder}holdout.parquet", f"{folder}train.parquet"], stored
    # The lost worker comes back while the scheduler's restart is tried: two ./asgard start commands at
    # once, as two operators would run them (their database set-up takes turns).
    restarting = subprocess.Popen(
        [str(REPO / "asgard"), "start", "--profile", "production", victim],
        env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip

    # The scheduler restarted mid-run: the run completes (a relative output: in the team's first root, on S3).
    batch = api.trigger("score_batch", {**BATCH_REQUEST, "output_path": "restart/out.parquet"})
    wait_for_running(api, "score_batch", batch, None)
    assert asgard("stop", "--profile", "production", "scheduler", env=env).returncode == 0
    assert asgard("start", "--profile", "production", "scheduler", env=env).returncode == 0
    assert api.wait_for_run("score_batch", batch, timeout=300).state == "success"
    objects = s3.list_objects_v2(Bucket=bucket, Prefix="data/default/restart/")
    assert [item["Key"] for item in objects["Contents"]] == ["data/default/restart/out.parquet"]
    _, errors = restarting.communicate(timeout=300)
    assert restarting.returncode == 0, errors

    status = asgard("status", "--profile", "production", env=env)
    lines = {line.split()[0]: line for line in status.stdout.splitlines() if line and not line.startswith("Airflow")}
    pids = [int(lines[name].split("pid ")[1].split()[0]) for name in expected]
    family += [p for pid in pids for p in (psutil.Process(pid), *psutil.Process(pid).children(recursive=True))]

    # No password on a command line.
    secrets_ = json.loads((services.settings.state_dir / "production-secrets.json").read_text())
    for process in family:
        with contextlib.suppress(psutil.NoSuchProcess, psutil.ZombieProcess):  # gone meanwhile
            assert secrets_["postgres_password"] not in " ".join(process.cmdline())

    # Trino stopped: a read through it fails naming it, before any query; the status says it is stopped.
    from asgard.features import store as feature_store

    assert asgard("stop", "--profile", "production", "trino", env=env).returncode == 0
    unavailable = pytest.raises(feature_store.OfflineStoreUnavailableError, match="Trino, the feature store's")
    with unavailable, feature_store.offline_store_errors(trino_config):
        pytest.fail("a read went ahead without Trino")
    status = asgard("status", "--profile", "production", env=env)
    assert re.search(r"^trino +stopped", status.stdout, re.MULTILINE), status.stdout
    # The service check names it too.
    down = api.run_and_wait("check_platform", {"checks": ["trino"]}, timeout=300)
    assert down.state == "failed" and f"Trino does not answer at {services.settings.trino_url}" in down.failure, down
    # And so does a training run's task, whose training set reads through it (its retry is left to run out).
    untrained = api.trigger("train_model", framework_request("sklearn", FRAMEWORK_PARAMS["sklearn"]))
    assert wait_for_state(api, "train_model", untrained, "build_training_set", ("up_for_retry", "failed"))
    failed_log = api.task_log("train_model", untrained, "build_training_set")
    named = f"Trino, the feature store's offline store, does not answer at {services.settings.trino_url}"
    assert named in failed_log, failed_log[-3000:]

    stopped = asgard("stop", "--profile", "production", env=env, timeout=300)
    assert stopped.returncode == 0, stopped.stderr
    survivors = [p.pid for p in family if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert not survivors, f"processes left running after stop: {survivors}"


# A script that tries PostgreSQL's door as other roles, and Redis; it logs no model (its run then fails
# at register_model, after run_script succeeded).
PG_PROBE = r"""
import os, socket, struct

def startup(user):
    pairs = b"user\0" + user.encode() + b"\0database\0postgres\0\0"
    body = struct.pack("!i", 196608) + pairs
    with socket.create_connection(("127.0.0.1", 5432), timeout=20) as door:
        door.sendall(struct.pack("!i", len(body) + 4) + body)
        return door.recv(2048)[5:].replace(b"\0", b"|").decode(errors="replace")

for user in os.environ["PROBE_USERS"].split(","):
    print(f"PROBE postgres as {user}: {startup(user)}", flush=True)
try:
    socket.create_connection(("127.0.0.1", 6379), timeout=5).close()
    print("PROBE redis: CONNECTED", flush=True)
except OSError as error:
    print(f"PROBE redis: {type(error).__name__} {error}", flush=True)
"""


def read_through_trino(services, monkeypatch, listed_queries: list[str]):
    """Trino reads the gold layer pyiceberg wrote: each table's rows through its JDBC catalog, and the profile's
    offline store (Feast's Trino store over the registry's Iceberg sources, the entity rows uploaded to the
    memory catalog) gives the training set DuckDB computes over the same tables; ``listed_queries`` (what the
    main job's tasks said they ran) and these reads' queries are in ``system.runtime.queries``. Returns the
    Feast configuration that reads through it."""
    import pandas as pd
    import pyarrow as pa
    import trino

    from asgard.features import gold
    from asgard.features import store as feature_store

    for name, value in services.platform_env().items():  # as a task's environment holds them
        monkeypatch.setenv(name, value)
    settings = services.settings
    location = gold.GoldLocation.for_settings(settings)
    cursor = trino.dbapi.connect(host=settings.bind_host, port=settings.trino_port, user="asgard").cursor()
    query_ids = list(listed_queries)
    for table in ("customer_features", "customer_labels"):
        cursor.execute(f"SELECT count(*) FROM iceberg.gold.{table}")
        assert cursor.fetchone()[0] == gold.load_table(table, location).scan().to_arrow().num_rows, table
        query_ids.append(cursor.query_id)

    trino_store = feature_store.open_store(settings)  # the profile's default: through Trino
    assert type(trino_store._get_provider().offline_store).__name__ == "GoldTrinoOfflineStore"
    duckdb = feature_store.open_store(settings.model_copy(update={"offline_store": "duckdb"}))
    view = trino_store.get_feature_view("customer_features")
    assert type(view.batch_source).__name__ == "IcebergSource"  # the registry says where, not what queries it
    labels = gold.load_table("customer_labels", location).scan().to_pandas()[["customer_id", "event_timestamp"]]
    features = [f"customer_features:{field.name}" for field in view.features]
    with feature_store.offline_store_errors(trino_store.config):
        by_trino = trino_store.get_historical_features(entity_df=labels, features=features).to_df()
    by_duckdb = duckdb.get_historical_features(entity_df=labels, features=features).to_df()
    key = ["customer_id", "event_timestamp"]
    by_trino, by_duckdb = (frame.sort_values(key).reset_index(drop=True) for frame in (by_trino, by_duckdb))
    assert len(by_trino) == len(labels) and by_trino[[f.name for f in view.features]].notna().any().all()
    pd.testing.assert_frame_equal(by_trino[by_duckdb.columns], by_duckdb, check_dtype=False)
    assert gold.load_catalog(location).list_tables("feast_uploads") == []  # the upload went with its job
    two_keys_and_ties_through_trino(trino_store, duckdb, location)

    # register_features' check reads the same columns and types through Trino's information_schema.
    def plain(columns):
        return {name: pa.string() if pa.types.is_large_string(kind) else kind for name, kind in columns.items()}

    through_trino_columns = feature_store.trino_table_columns(trino_store.config, "customer_features")
    assert plain(through_trino_columns) == plain(gold.table_columns("customer_features", location))
    with pytest.raises(gold.GoldLayerError, match="known tables: customer_features, customer_labels"):
        feature_store.trino_table_columns(trino_store.config, "no_such_table")
    cursor.execute("SELECT query_id, query FROM system.runtime.queries")
    listed = dict(cursor.fetchall())
    assert set(query_ids) <= set(listed), query_ids
    assert any("iceberg.feast_uploads." in query and "customer_features" in query for query in listed.values()), listed
    # The script reader's Trino user (the reader role's name, what its door presents): SELECT in
    # iceberg.gold, and nothing else.
    reader = trino.dbapi.connect(
        host=settings.bind_host, port=settings.trino_port, user=services.databases.reader_role
    ).cursor()
    reader.execute("SELECT count(*) FROM iceberg.gold.customer_labels")
    assert reader.fetchone()[0] == len(labels)
    for statement in (
        "CREATE TABLE iceberg.gold.taken (x bigint)",
        "DROP TABLE iceberg.gold.customer_labels",
        "CREATE TABLE memory.default.taken AS SELECT 1 AS x",
        "SELECT query FROM system.runtime.queries",
        "SET SESSION query_max_run_time = '1000d'",  # the time limit stays the server's
    ):
        with pytest.raises(trino.exceptions.TrinoUserError, match="Access Denied"):
            reader.execute(statement)
            reader.fetchall()
    slow_query_is_named(settings, trino_store.config)
    return trino_store.config


def slow_query_is_named(settings, config) -> None:
    """The profile's Trino holds every query to half a task's time (``query.max-run-time``, every session's
    default; only the platform's user may set session properties): a query past it fails as Trino's
    EXCEEDED_TIME_LIMIT, which the read names. Here the platform's session lowers it to a second for a query of
    ten billion rows."""
    import trino

    from asgard.features import store as feature_store

    cursor = trino.dbapi.connect(host=settings.bind_host, port=settings.trino_port, user="asgard").cursor()
    cursor.execute("SHOW SESSION LIKE 'query_max_run_time'")
    (name, value, default, *_), *_ = cursor.fetchall()
    limit = re.fullmatch(r"([\d.]+)([mh])", default)
    assert limit and float(limit.group(1)) * (60 if limit.group(2) == "h" else 1) == 60, (name, value, default)
    slow = trino.dbapi.connect(
        host=settings.bind_host,
        port=settings.trino_port,
        user="asgard",
        session_properties={"query_max_run_time": "1s"},
    ).cursor()
    url = re.escape(settings.trino_url)
    named = rf"Trino, the feature store's offline store, at {url} ended query \S+: EXCEEDED_TIME_LIMIT"
    with pytest.raises(feature_store.OfflineStoreQueryError, match=named), feature_store.offline_store_errors(config):
        slow.execute(
            "SELECT count(*) FROM UNNEST(sequence(1, 10000)) AS a (x) CROSS JOIN UNNEST(sequence(1, 10000)) AS b (y) "
            "CROSS JOIN UNNEST(sequence(1, 100)) AS c (z) WHERE (x * y + z) % 7 = 3"
        )
        slow.fetchall()


def two_keys_and_ties_through_trino(trino_store, duckdb, location) -> None:
    """A view of two keys whose values run together when written one after the other ((1, 12) and (11, 2)), whose
    newest row has no created timestamp: Trino's answer is each row's own, as DuckDB's is."""
    from datetime import UTC, datetime, timedelta

    import pandas as pd
    import pyarrow as pa
    from feast import Entity, FeatureView, Field
    from feast.infra.data_sources.contrib.iceberg_catalog.iceberg_source import IcebergSource
    from feast.types import Int64
    from feast.value_type import ValueType

    from asgard.features import gold

    day = datetime(2026, 1, 10, tzinfo=UTC)
    moment = pa.timestamp("us", tz="UTC")
    schema = pa.schema([("a", pa.int64()), ("b", pa.int64()), ("value", pa.int64()),
                        ("event_timestamp", moment), ("created", moment)])  # fmt: skip
    rows = pa.table({
        "a": [1, 11, 1, 1], "b": [12, 2, 12, 12], "value": [112, 1102, 9, 7],
        "event_timestamp": [day, day, day - timedelta(days=1), day - timedelta(days=2)],
        "created": [None, day, day, day],
    }, schema=schema)  # fmt: skip
    catalog = gold.load_catalog(location)
    catalog.create_namespace_if_not_exists("edge_cases")
    catalog.create_table("edge_cases.pairs", schema=rows.schema).append(rows)
    source = IcebergSource(
        name="pairs", catalog_type=location.catalog_type, catalog_name=location.catalog_name, endpoint="",
        warehouse=location.warehouse, namespace="edge_cases", table="pairs", timestamp_field="event_timestamp",
        created_timestamp_column="created",
    )  # fmt: skip
    entities = [Entity(name=name, join_keys=[name], value_type=ValueType.INT64) for name in ("a", "b")]
    fields = [Field(name=name, dtype=Int64) for name in ("a", "b", "value")]
    view = FeatureView(name="pairs", entities=entities, ttl=timedelta(days=30), source=source, schema=fields)
    trino_store.apply([*entities, view])
    asked = pd.DataFrame({"a": [1, 11], "b": [12, 2], "event_timestamp": [day + timedelta(hours=1)] * 2})
    by_trino = trino_store.get_historical_features(entity_df=asked, features=["pairs:value"]).to_df()
    assert by_trino.sort_values("a")["value"].tolist() == [112, 1102], by_trino
    by_duckdb = duckdb.get_historical_features(entity_df=asked, features=["pairs:value"]).to_df()
    assert by_duckdb.sort_values("a")["value"].tolist() == [112, 1102], by_duckdb


def wait_for_state(api, dag_id: str, run_id: str, task_id: str, states: tuple[str, ...], timeout: float = 300) -> str:
    """The state of ``task_id`` of the run once it is one of ``states``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = api.task_states(dag_id, run_id).get(task_id)
        if state in states:
            return state
        time.sleep(1.0)
    raise AssertionError(f"{dag_id}/{run_id}: {task_id} not in {states} within {timeout}s")


def wait_for_running(api, dag_id: str, run_id: str, task_id: str | None, timeout: float = 300) -> str:
    """The worker running ``task_id`` (any task when None) of the run, once it runs."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for ti in api.task_instances.get_task_instances(dag_id, run_id).task_instances:
            state = str(ti.state.value if hasattr(ti.state, "value") else ti.state)
            if task_id in (None, ti.task_id) and state == "running" and ti.hostname:
                return ti.hostname
        time.sleep(0.5)
    raise AssertionError(f"{dag_id}/{run_id}: {task_id} did not start within {timeout}s")


def kill_host(status_line: str) -> None:
    """SIGKILL a service's whole process tree, as a lost host would end it."""
    process = psutil.Process(int(status_line.split("pid ")[1].split()[0]))
    family = [process, *process.children(recursive=True)]
    for member in family:
        with contextlib.suppress(psutil.NoSuchProcess):
            member.kill()
    psutil.wait_procs(family, timeout=10)
