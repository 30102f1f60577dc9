"""The gate judges a script's model on labels the script cannot read (issue 51).

A script that memorises every labelled row it can reach — through Feast as an honest script reads, the
Iceberg catalog the Feast registry names (every table, every snapshot), and every Parquet file in its
sandbox — and returns a lookup table of them, would score about AUC 1.0 on any holdout drawn from those
rows. Through the real ``train_script`` DAG on the real embedded stack, after an honest champion: it
reads none of the held-back rows, scores at chance on them, and stays @challenger. Below, the pieces:
which rows are held back, and a real sandbox given the script's view of a real gold layer.
"""

from __future__ import annotations

import base64
import json
import math
import re
import time
import uuid
from datetime import timedelta
from pathlib import Path

import pandas as pd
import pytest
from mlflow import MlflowClient

from asgard.core.sandbox import Bind, Limits
from asgard.core.settings import get_settings
from asgard.features import gold
from asgard.features import store as feature_store
from asgard.hooks.mlflow import MlflowHook
from asgard.local.examples import EXAMPLE_REQUIREMENTS, example_upload
from asgard.registry.versions import CHALLENGER, CHAMPION
from asgard.training import data as training_data
from asgard.training import evaluation, holdback, production_views
from asgard.training.scripts import pipeline
from asgard.training.scripts import runner as user_scripts
from conftest import feature_home
from sample_data.gold_layer import GoldSpec, write_gold_layer

# The same gold layer as tests/integration/test_train_script_dag.py: one shared stack, not regenerated.
SPEC = GoldSpec(customers=600, days=3, end="2026-11-01T00:00:00+00:00", seed=17)

# Every labelled row the script can reach, by every way it has; prints what it found.
READER = r"""
import glob, json, os
import numpy as np, pandas as pd, pyarrow.parquet as pq
from feast import FeatureStore

store = FeatureStore(repo_path=os.environ["FEAST_REPO_PATH"])
customers = int(os.environ.get("N_CUSTOMERS", "2000"))
now = pd.Timestamp.now(tz="UTC")  # as the example script asks: within the views' ttl
entities = pd.DataFrame({"customer_id": np.arange(1, customers + 1, dtype=np.int64), "event_timestamp": now})
found = []
feast = store.get_historical_features(entity_df=entities, features=["customer_labels:churned"]).to_df()
feast = feast.dropna(subset=["churned"])
found.append(feast[["customer_id", "churned"]].assign(event_timestamp=pd.NaT))

catalog = store.get_feature_view("customer_labels").batch_source.get_catalog_client()
in_catalog = 0
for namespace in catalog.list_namespaces():
    for identifier in catalog.list_tables(namespace):
        table = catalog.load_table(identifier)
        for snapshot in table.snapshots():  # every snapshot: time travel too
            rows = table.scan(snapshot_id=snapshot.snapshot_id).to_pandas()
            if {"customer_id", "churned"} <= set(rows.columns):
                in_catalog += len(rows)
                found.append(rows[["customer_id", "churned", "event_timestamp"]])

files = []
for root, folders, names in os.walk("/"):
    folders[:] = [f for f in folders if os.path.join(root, f) not in ("/proc", "/sys", "/dev", "/usr")]
    for name in names:
        path = os.path.join(root, name)
        if name.endswith(".parquet"):
            try:
                rows = pq.read_table(path).to_pandas()
            except Exception:
                continue
            if {"customer_id", "churned"} <= set(rows.columns):
                files.append(path)
                found.append(rows[["customer_id", "churned", "event_timestamp"]])

probe = os.environ.get("PROBE")
if probe:
    print("HOSTILE probe", probe, "exists:", os.path.exists(probe), flush=True)
labels = pd.concat(found)
labels["event_timestamp"] = pd.to_datetime(labels["event_timestamp"], utc=True)
labels = labels.sort_values("event_timestamp", na_position="last").drop_duplicates("customer_id")
print(f"HOSTILE feast={len(feast)} catalog={in_catalog} files={len(files)}", flush=True)
print("HOSTILE ids " + json.dumps(sorted(int(i) for i in labels["customer_id"])), flush=True)
"""

# ... then a "model" that is a lookup table of those labels, keyed by each row's features as of its label.
MEMORISER = (
    READER
    + r"""
import mlflow
from sklearn.base import BaseEstimator, ClassifierMixin

FEATURES = ["total_purchases", "avg_purchase_value", "days_since_last_purchase",
            "customer_lifetime_value", "account_age_days", "support_tickets_count"]


def key(row):
    return tuple("nan" if pd.isna(value) else round(float(value), 6) for value in row)


class Lookup(ClassifierMixin, BaseEstimator):
    def __init__(self, table=None):
        self.table = table

    def fit(self, x, y):
        self.classes_ = np.array([0, 1])
        return self

    def predict_proba(self, x):
        known = np.array([self.table.get(key(row), 0.5) for row in x[FEATURES].itertuples(index=False)])
        return np.column_stack([1 - known, known])

    def predict(self, x):
        return (self.predict_proba(x)[:, 1] >= 0.5).astype(int)


entity = labels[["customer_id", "event_timestamp"]].copy()
entity["customer_id"] = entity["customer_id"].astype("int64")
entity["event_timestamp"] = entity["event_timestamp"].fillna(now)
features = [f"customer_features:{name}" for name in FEATURES]
at_label = store.get_historical_features(entity_df=entity, features=features).to_df()
at_label = at_label.merge(labels[["customer_id", "churned"]], on="customer_id")
table = {key(row[:-1]): float(row[-1]) for row in at_label[FEATURES + ["churned"]].itertuples(index=False)}
model = Lookup(table).fit(None, None)
mlflow.set_experiment(os.environ["EXPERIMENT_NAME"])
with mlflow.start_run():
    mlflow.log_metric("roc_auc", 1.0)  # what it scores on every row it read
    mlflow.sklearn.log_model(model, name=os.environ["MODEL_NAME"], input_example=at_label[FEATURES].head(5),
                             serialization_format="cloudpickle")
print("HOSTILE memorised", len(table), "rows", flush=True)
"""
)


def found_ids(output: str) -> set[int]:
    match = re.search(r"HOSTILE ids (\[.*?\])", output)
    assert match, output[-3000:]
    return set(json.loads(match.group(1)))


def labels_and_held(location: gold.GoldLocation, keys: list[str], share: float) -> tuple[pd.DataFrame, pd.Series]:
    labels = gold.load_table("customer_labels", location).scan().to_pandas()
    return labels, holdback.held_back(labels, share, keys)


# --------------------------------------------------------------------------- which rows
def test_the_newest_share_is_held_back_and_ties_are_broken_the_same_everywhere():
    base = pd.Timestamp("2026-11-01", tz="UTC")
    labels = pd.DataFrame(
        {
            "customer_id": range(1, 11),
            "event_timestamp": [base - pd.Timedelta(days=day) for day in (9, 8, 7, 6, 5, 4, 3, 0, 0, 0)],
            "churned": [0, 1] * 5,
        }
    )
    held = holdback.held_back(labels, 0.2, ["customer_id"])
    assert held.sum() == 2 and set(labels[held]["event_timestamp"]) == {base}  # two of the three newest
    shuffled = labels.sample(frac=1.0, random_state=3)
    again = holdback.held_back(shuffled, 0.2, ["customer_id"])
    assert set(shuffled[again]["customer_id"]) == set(labels[held]["customer_id"])
    # The label's value plays no part in the choice: the same keys are held back whatever they say.
    flipped = holdback.held_back(labels.assign(churned=1 - labels["churned"]), 0.2, ["customer_id"])
    assert flipped.equals(held)
    assert holdback.held_back(labels, 0.35, ["customer_id"]).sum() == math.ceil(10 * 0.35)
    with pytest.raises(ValueError, match="between 0 and 1"):
        holdback.held_back(labels, 1.0, ["customer_id"])
    # Rows the keys do not tell apart go together (their order is the scan's, which may change).
    later = base + pd.Timedelta(days=1)
    twice = pd.DataFrame(
        {"customer_id": [1, 2, 3, 3], "event_timestamp": [base, base, later, later], "churned": [0, 1, 0, 1]}
    )
    assert holdback.held_back(twice, 0.25, ["customer_id"]).tolist() == [False, False, True, True]
    # The keys are the operator's (never the feature store's entities, which any team adds to): a label
    # among them would make the choice tell the labels. Keys the rows lack fail, never fall back to every column.
    from asgard.core.settings import Settings
    from asgard.training.data import TrainingDataError

    assert holdback.key_columns(Settings(gate_holdback_keys="customer_id, region")) == ["customer_id", "region"]
    with pytest.raises(TrainingDataError, match="no region column"):
        holdback.held_back(labels, 0.2, ["customer_id", "region"])


# --------------------------------------------------------------------------- the script's view
def test_a_sandboxed_reader_given_the_scripts_view_reads_none_of_the_held_back_labels(tmp_path_factory):
    home = tmp_path_factory.mktemp("holdback-home")
    with feature_home(home, SPEC):
        settings = get_settings()
        location = gold.GoldLocation.for_settings(settings)
        keys = holdback.key_columns(settings)
        labels, held = labels_and_held(location, keys, settings.gate_holdback_fraction)
        original = Path(gold.load_table("customer_labels", location).location().removeprefix("file://"))
        scratch = tmp_path_factory.mktemp("holdback-run")
        binds = pipeline.script_data_binds(scratch / "gold_view", settings)
        repo = feature_store.write_script_repo(scratch / "feature_repo")
        python = user_scripts.ScriptEnvironments(settings=settings).ensure(EXAMPLE_REQUIREMENTS)
        injected = user_scripts.injected_variables(
            example_upload(), "http://127.0.0.1:5000", "no-run", pipeline.FEATURE_REPO_INSIDE
        )
        env = user_scripts.script_environment(
            python, injected, {"N_CUSTOMERS": str(SPEC.customers), "PROBE": str(original / "data")}
        )
        lines: list[str] = []
        user_scripts.run_script(
            user_scripts.UserScript("reader.py", READER),
            python,
            scratch / "work",
            env,
            Limits(timeout_seconds=600),
            binds=[Bind(repo, pipeline.FEATURE_REPO_INSIDE), *binds],
            output=lines.append,
        )
    output = "\n".join(lines)
    visible = set(labels[~held]["customer_id"])
    assert held.sum() == math.ceil(SPEC.customers * settings.gate_holdback_fraction)
    # It read every visible label (Feast and the catalog both answer), and not one held-back row.
    assert found_ids(output) == visible, output[-3000:]
    assert f"HOSTILE feast={len(visible)} catalog={len(visible)}" in output, output[-3000:]
    assert f"HOSTILE probe {original / 'data'} exists: False" in output, output[-3000:]
    # Nothing bound into the sandbox holds a file of the real label table.
    for bind in binds:
        source = Path(bind.source)
        assert source != original and original not in source.parents and source not in original.parents, bind


# Production's reader: the catalog in PostgreSQL and the warehouse on S3, through the run's doors. Every
# labelled row of every table and snapshot the catalog it is given lists; then the real label table, found
# in the gold database's own catalog (the reader may SELECT there), read straight from S3.
PRODUCTION_READER = r"""
import json, os, urllib.error, urllib.request
import psycopg
from pyiceberg.catalog import load_catalog

catalog = load_catalog("gold")
ids, tables = set(), []
for identifier in catalog.list_tables("gold"):
    table = catalog.load_table(identifier)
    tables.append(identifier[-1])
    for snapshot in table.snapshots():
        rows = table.scan(snapshot_id=snapshot.snapshot_id).to_pandas()
        if {"customer_id", "churned"} <= set(rows.columns):
            ids.update(int(i) for i in rows["customer_id"])
login = os.environ["PYICEBERG_CATALOG__GOLD__URI"].replace("postgresql+psycopg://", "postgresql://")
with psycopg.connect(login) as connection:
    (real,) = connection.execute(
        "SELECT metadata_location FROM public.iceberg_tables WHERE table_name = 'customer_labels'"
    ).fetchone()
answers = {}
door = "http://127.0.0.1:9000/"
for name, path in (("metadata", real.split("://", 1)[1]), ("data", os.environ["PROBE"].split("://", 1)[1]),
                   ("listing", "asgard?list-type=2&prefix=" + real.split("/", 3)[3].split("/metadata/")[0] + "/"),
                   ("listing the warehouse", "asgard?list-type=2&prefix=gold/"),
                   ("another run's view", "asgard/gold/script-views/0123abce/customer_labels/metadata/x.json")):
    try:
        with urllib.request.urlopen(door + path, timeout=20) as answer:
            answers[name] = [answer.status, answer.read()[:200].decode(errors="replace")]
    except urllib.error.HTTPError as error:
        answers[name] = [error.code, error.read().decode(errors="replace")]
print("HOSTILE " + json.dumps({"ids": sorted(ids), "tables": sorted(tables), "real": real, "answers": answers}))
"""


@pytest.fixture
def production_gold(profile_databases, monkeypatch):
    """A production gold layer: its catalog in the machine's PostgreSQL (a fresh prefix), its warehouse on moto's
    S3, the platform's login in this process's environment as a worker's has it. Yields the profile, its
    passwords, the settings, the location, an S3 client and S3's URL."""
    import boto3

    from asgard.core.settings import Settings
    from conftest import running_moto

    profile, passwords = profile_databases
    settings = Settings(profile="production", database_prefix=profile.role)
    with running_moto() as s3_url:
        keys = {"aws_access_key_id": "platform", "aws_secret_access_key": "platform"}
        s3 = boto3.client("s3", endpoint_url=s3_url, region_name="us-east-1", **keys)
        s3.create_bucket(Bucket="asgard")
        catalog = "PYICEBERG_CATALOG__GOLD__"
        for name, value in {
            "URI": profile.url("gold", driver="postgresql+psycopg"), "S3__ENDPOINT": s3_url,
            "S3__ACCESS_KEY_ID": "platform", "S3__SECRET_ACCESS_KEY": "platform", "S3__REGION": "us-east-1",
        }.items():  # fmt: skip
            monkeypatch.setenv(catalog + name, value)
        location = gold.GoldLocation.for_settings(settings)
        write_gold_layer(GoldSpec(customers=300, days=2, end=SPEC.end, seed=5), location, log=lambda _: None)
        yield profile, passwords, settings, location, s3, s3_url


def test_a_sandboxed_reader_through_productions_doors_reads_none_of_the_held_back_labels(production_gold, tmp_path):
    """The production profile's view (a schema of the gold database the PostgreSQL door opens sessions on, a
    cut copy of the label table on S3) on the machine's PostgreSQL and moto's S3: a script reads every
    visible label and no held-back one; the real label table, which it can find, opens to none of its reads.
    The view is gone when the run ends."""
    import dataclasses
    import tempfile

    import psycopg

    from asgard.local.examples import PRODUCTION_EXAMPLE_REQUIREMENTS
    from asgard.training.scripts import store_doors
    from asgard.training.scripts.store_doors import StoreAccess

    profile, passwords, settings, location, s3, s3_url = production_gold
    labels, held = labels_and_held(location, ["customer_id"], settings.gate_holdback_fraction)
    real = gold.load_table("customer_labels", location)
    data_file = next(task.file.file_path for task in real.scan().plan_files())
    access = StoreAccess(
        postgres_host="127.0.0.1", postgres_port=5432, user=profile.reader_role,
        password=passwords["reader_password"], registry_database=profile.name("feast"),
        gold_database=profile.name("gold"), s3_endpoint=s3_url, s3_access_key="reader",
        s3_secret_key="reader", s3_readable="asgard/gold",
    )  # fmt: skip
    python = user_scripts.ScriptEnvironments(settings=settings).ensure(PRODUCTION_EXAMPLE_REQUIREMENTS)
    env = user_scripts.script_environment(python, {name: "x" for name in user_scripts.INJECTED}, {"PROBE": data_file})
    lines: list[str] = []
    with production_views.production_script_view(
        "0123abcd", access.user, "customer_labels", ["customer_id"], settings=settings
    ) as view:
        run_access = dataclasses.replace(access, gold_schema=view.schema, s3_files=view.files, s3_own=view.own)
        env.update(run_access.script_variables())
        with tempfile.TemporaryDirectory(prefix="asgard-doors-") as folder:
            sockets = Path(folder)
            sockets.chmod(0o755)
            with store_doors.opened(run_access, sockets) as doors:
                (sockets / "mlflow.sock").touch()  # the run's MLflow door is not under test here
                user_scripts.run_script(
                    user_scripts.UserScript("reader.py", PRODUCTION_READER), python, tmp_path / "work", env,
                    Limits(timeout_seconds=600), sockets=sockets, doors=doors, output=lines.append,
                )  # fmt: skip
    remaining = [item["Key"] for item in s3.list_objects_v2(Bucket="asgard").get("Contents", [])]
    after = gold.load_table("customer_labels", location).metadata_location
    output = "\n".join(lines)
    match = re.search(r"HOSTILE (\{.*\})", output)
    assert match, output[-3000:]
    found = json.loads(match.group(1))
    assert set(found["ids"]) == set(labels[~held]["customer_id"]) and held.sum() == 60, output[-3000:]
    assert found["tables"] == ["customer_features", "customer_labels"] and found["real"] == real.metadata_location
    for name, (status, body) in found["answers"].items():
        assert status == 403 and "AccessDenied" in body and "gate judges" in body, (name, status, body)
    # The run's schema and its copy's files are gone; the gold layer is as it was.
    with psycopg.connect(profile.url("gold", driver="postgresql")) as connection:
        schemas = connection.execute("SELECT nspname FROM pg_namespace WHERE nspname LIKE 'script_view_%'").fetchall()
    # (pyarrow marks the folders it writes in: the views' common one is an empty object that stays.)
    assert schemas == [] and [key for key in remaining if "script-views/" in key] == ["gold/script-views/"], remaining
    assert after == real.metadata_location


# A run holding its view until it is killed: what a worker killed mid-run leaves behind.
HOLDER = """
import sys, time
from asgard.core.settings import Settings
from asgard.training.production_views import production_script_view

settings = Settings(profile="production", database_prefix=sys.argv[1])
with production_script_view(sys.argv[2], sys.argv[3], "customer_labels", ["customer_id"], settings=settings):
    print("ready", flush=True)
    time.sleep(600)
"""


def test_a_view_left_by_a_killed_run_is_swept_by_a_later_run_and_a_live_runs_is_not(production_gold):
    """A worker killed mid-run leaves its view (a schema, a copy on S3). A later script run's view removes it
    before making its own once it is older than any task may run; it leaves a younger one, the view of a run
    that is still alive however old, and schemas that are not views. A sweep told any age will do takes the
    young leftover, and the live run's once that run is killed too; the gold layer is untouched."""
    import subprocess
    import sys

    import sqlalchemy

    profile, _, settings, location, s3, _ = production_gold
    labels_before = gold.load_table("customer_labels", location).metadata_location
    holders: list[subprocess.Popen] = []

    def holding(key: str) -> subprocess.Popen:
        holder = subprocess.Popen(
            [sys.executable, "-c", HOLDER, profile.role, key, profile.reader_role], stdout=subprocess.PIPE, text=True
        )
        holders.append(holder)
        printed: list[str] = []  # (it may log before: Airflow's configuration)
        while (line := holder.stdout.readline()) not in ("ready\n", ""):
            printed.append(line)
        assert line == "ready\n", f"the run holding {key} did not make its view: {printed}"
        return holder

    def run(statement: str, **values) -> list:
        with engine.begin() as connection:
            result = connection.execute(sqlalchemy.text(statement), values)
            return result.all() if result.returns_rows else []

    def kill(holder: subprocess.Popen, key: str) -> None:
        holder.kill()
        holder.wait(timeout=30)
        lock = production_views._view_lock(key) & (2**64 - 1)  # pg_locks shows a bigint key as two oids
        for _ in range(100):  # until its server session has ended and let the lock go
            held = "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND classid = :high AND objid = :low"
            if run(held, high=lock >> 32, low=lock & (2**32 - 1))[0][0] == 0:
                return
            time.sleep(0.1)
        raise AssertionError(f"the killed run's session still holds {key}'s lock")

    def views() -> tuple[list[str], list[str]]:
        schemas = run("SELECT nspname FROM pg_namespace WHERE nspname LIKE 'script%view%' ORDER BY 1")
        listed = s3.list_objects_v2(Bucket="asgard", Prefix="gold/script-views/").get("Contents", [])
        folders = sorted({item["Key"].split("/")[2] for item in listed if item["Key"].count("/") > 2})
        return sorted(schema.removeprefix("script_view_") for (schema,) in schemas), folders

    engine = sqlalchemy.create_engine(profile.url("gold", driver="postgresql+psycopg"))
    try:
        old, alive, young = holding("old0001"), holding("live0001"), holding("young001")
        kill(old, "old0001")
        kill(young, "young001")
        for key in ("old0001", "live0001"):  # made four hours ago, as their schemas' comments record it
            run(f"COMMENT ON SCHEMA script_view_{key} IS 'asgard script view, made 2026-01-01T00:00:00+00:00'")
        run("CREATE SCHEMA script_view_notours")  # someone else's, and not a view's name at all
        run("CREATE SCHEMA script_viewx")
        with production_views.production_script_view(
            "next0001", profile.reader_role, "customer_labels", ["customer_id"], settings=settings
        ):
            assert views() == (
                ["live0001", "next0001", "notours", "script_viewx", "young001"],
                ["live0001", "next0001", "young001"],
            )
        assert production_views.sweep_script_views(engine, location, older_than=timedelta(0)) == ["young001"]
        kill(alive, "live0001")
        assert production_views.sweep_script_views(engine, location) == ["live0001"]
        assert views() == (["notours", "script_viewx"], [])
        assert gold.load_table("customer_labels", location).metadata_location == labels_before
    finally:
        for holder in holders:
            holder.kill()
            holder.wait(timeout=30)
        run("DROP SCHEMA IF EXISTS script_view_notours; DROP SCHEMA IF EXISTS script_viewx")
        engine.dispose()


# --------------------------------------------------------------------------- through the real DAG
@pytest.fixture(scope="module")
def script_stack(embedded_stack):
    settings = embedded_stack.settings
    write_gold_layer(SPEC, gold.GoldLocation.for_settings(settings), log=lambda _: None)
    feature_store.apply_repo(settings)
    embedded_stack.api.wait_for_dag("train_script")
    return embedded_stack


def script_conf(name: str, script_name: str, source: str) -> dict:
    return {
        **example_upload(customers=SPEC.customers, model_name=name),
        "script_name": script_name,
        "script_content": base64.b64encode(source.encode()).decode(),
    }


@pytest.mark.integration
def test_a_script_that_memorises_every_label_it_reads_does_not_take_champion(script_stack, monkeypatch):
    api, settings = script_stack.api, script_stack.settings
    name = f"holdback_{uuid.uuid4().hex[:6]}"
    honest = api.run_and_wait("train_script", example_upload(customers=SPEC.customers, model_name=name), timeout=1800)
    assert honest.state == "success", honest.failure
    first = api.task_result("train_script", honest.run_id, "gate_model")
    assert first["promoted"] and first["metric_source"] == "platform" and first["score"] > 0.6, first

    hostile = api.run_and_wait("train_script", script_conf(name, "memorise.py", MEMORISER), timeout=1800)
    assert hostile.state == "success", hostile.failure
    decision = api.task_result("train_script", hostile.run_id, "gate_model")
    log = api.task_log("train_script", hostile.run_id, "run_script")
    assert "HOSTILE memorised" in log, log[-3000:]

    # It read every label it was let read, and none of those the gate judges on...
    store = feature_store.open_store(settings)
    labels, held = labels_and_held(
        gold.GoldLocation.for_settings(settings), holdback.key_columns(), settings.gate_holdback_fraction
    )
    read = found_ids(log)
    assert read == set(labels[~held]["customer_id"]) and not read & set(labels[held]["customer_id"])
    # ...so on those its lookup table knows nothing: chance, not the ~1.0 of a holdout it could read.
    assert decision["metric"] == "roc_auc" and decision["metric_source"] == "platform", decision
    assert decision["score"] < 0.55 and decision["champion_version"] == "1", decision
    assert decision["champion_score"] == pytest.approx(first["score"]) and not decision["promoted"], decision
    client = MlflowClient(settings.mlflow_url, settings.mlflow_url)
    assert client.get_model_version_by_alias(name, CHAMPION).version == "1"
    assert client.get_model_version_by_alias(name, CHALLENGER).version == "2"

    # The same version, scored (sandboxed, as the gate does) on the rows it could read: perfect. A
    # holdout drawn from those, as the gate's was, would have made it champion.
    monkeypatch.setenv("ASGARD_HOME", str(settings.home))
    connection = {"conn_type": "http", "extra": {"tracking_uri": settings.mlflow_url}}
    monkeypatch.setenv("AIRFLOW_CONN_MLFLOW_DEFAULT", json.dumps(connection))
    request = {"feature_views": ["customer_features"], "target_column": "churned"}
    source = training_data.check_data_source(request, store)
    share, keys = settings.gate_holdback_fraction, holdback.key_columns()
    readable, _ = training_data.build_training_set(
        source, store, label_rows=lambda rows: rows[~holdback.held_back(rows, share, keys)]
    )
    hook = MlflowHook()
    version = hook.client.get_model_version(name, "2")
    on_readable = evaluation.metric_on(hook, version, readable[source.feature_names], readable["churned"], "roc_auc")
    assert on_readable > 0.99, on_readable
