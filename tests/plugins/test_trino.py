"""The production profile's Trino service: where its server comes from, which JDK runs it, what its
configuration says, and where it sits among the profile's services. (The real server is started and
queried by the production e2e test, on the stack it runs anyway.)"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from asgard.core.settings import Settings
from asgard.features import gold
from asgard.local import trino
from asgard.local.processes import ServiceError


def _jdk(root: Path, name: str, version: str) -> Path:
    home = root / name
    (home / "bin").mkdir(parents=True)
    (home / "bin" / "java").write_text("#!/bin/sh\n")
    (home / "release").write_text(f'IMPLEMENTOR="Eclipse Adoptium"\nJAVA_VERSION="{version}"\n')
    return home


def test_the_newest_jdk_new_enough_runs_trino_and_none_is_said_clearly(tmp_path, monkeypatch):
    monkeypatch.setattr(trino, "JVM_ROOT", tmp_path)
    settings = Settings(home=tmp_path / "home", profile="production")
    _jdk(tmp_path, "java-17-openjdk-amd64", "17.0.15")
    with pytest.raises(ServiceError, match=r"needs Java 24 or newer; .*java-17-openjdk-amd64 \(Java 17\)"):
        trino.find_java_home(settings)
    _jdk(tmp_path, "temurin-24-jdk-amd64", "24.0.1")
    newest = _jdk(tmp_path, "temurin-25-jdk-amd64", "25.0.3")
    assert trino.find_java_home(settings) == newest
    # Named by the setting: used as it is, or refused when too old.
    chosen = Settings(home=tmp_path / "home", profile="production", trino_java_home=tmp_path / "temurin-24-jdk-amd64")
    assert trino.find_java_home(chosen) == tmp_path / "temurin-24-jdk-amd64"
    old = Settings(home=tmp_path / "home", profile="production", trino_java_home=tmp_path / "java-17-openjdk-amd64")
    with pytest.raises(ServiceError, match=r"ASGARD_TRINO_JAVA_HOME=.* is Java 17"):
        trino.find_java_home(old)


def test_the_server_is_the_machines_when_it_may_be_written_there(tmp_path):
    machine = tmp_path / "machine"
    settings = Settings(home=tmp_path / "home", machine_dir=machine, cache_dir=tmp_path / "cache")
    assert trino.server_dir(settings) == machine / "trino" / trino.TRINO_VERSION  # created on first fetch
    machine.mkdir(mode=0o500)
    try:
        if trino.os.access(machine, trino.os.W_OK):  # root may write anywhere: the machine's folder it is
            assert trino.server_dir(settings) == machine / "trino" / trino.TRINO_VERSION
        else:
            assert trino.server_dir(settings) == tmp_path / "cache" / "trino" / trino.TRINO_VERSION
    finally:
        machine.chmod(0o700)


def test_its_configuration_is_one_loopback_node_with_the_platforms_iceberg_catalog(tmp_path):
    settings = Settings(home=tmp_path / "home", profile="production", trino_port=18095, trino_heap_mb=1024)
    etc = trino.write_config(settings, "connector.name=iceberg\niceberg.catalog.type=jdbc\n")

    def properties(name: str) -> dict[str, str]:
        return dict(line.split("=", 1) for line in (etc / name).read_text().splitlines())

    node, server = properties("node.properties"), properties("config.properties")
    assert node["node.bind-ip"] == "127.0.0.1" and node["node.data-dir"] == str(tmp_path / "home" / "trino" / "data")
    assert server["http-server.http.port"] == "18095" and server["discovery.uri"] == "http://127.0.0.1:18095"
    assert server["coordinator"] == "true" and server["node-scheduler.include-coordinator"] == "true"
    assert server["query.max-memory-per-node"] == "307MB"  # within the heap
    assert server["query.max-run-time"] == "60m"  # half a task's 2 h: a slow query is Trino's error, named
    jvm = (etc / "jvm.config").read_text().splitlines()
    assert "-Xmx1024M" in jvm and "-Duser.timezone=UTC" in jvm
    assert "-XX:TieredStopAtLevel=1" not in jvm  # the full JIT, unless a quick start is asked for
    assert "-XX:TieredStopAtLevel=1" in trino.jvm_options(settings.model_copy(update={"trino_quick_start": True}))
    assert properties("catalog/iceberg.properties") == {"connector.name": "iceberg", "iceberg.catalog.type": "jdbc"}
    assert properties("catalog/memory.properties")["connector.name"] == "memory"
    assert all((etc / name).stat().st_mode & 0o077 == 0 for name in ("node.properties", "catalog/iceberg.properties"))
    access = properties("access-control.properties")
    assert access["access-control.name"] == "file" and access["security.config-file"] == str(etc / "rules.json")
    rules = json.loads((etc / "rules.json").read_text())
    reader = [rule for rule in rules["catalogs"] if rule["user"] == "asgard_reader"]
    assert reader == [{"user": "asgard_reader", "catalog": "iceberg", "allow": "read-only"}]
    assert {"user": "asgard_reader", "catalog": "iceberg", "schema": "gold", "privileges": ["SELECT"]} in rules[
        "tables"
    ]
    # Session properties (the time limit among them) are the platform's user's alone to set.
    assert rules["system_session_properties"] == [{"user": "asgard", "allow": True}]
    assert rules["catalog_session_properties"] == [{"user": "asgard", "allow": True}]
    argv = trino.launcher_argv(settings)
    assert argv[0].endswith("/bin/launcher") and argv[1:3] == ["run", "--etc-dir"]


def test_a_query_trino_ends_is_said_by_name_with_its_id_and_reason():
    """What Trino's client raises for a query Trino ended (its error as Trino sent it), and for one cancelled
    before Trino ran it (a bare string), names Trino, where, the query and why."""
    from trino.exceptions import TrinoExternalError, TrinoQueryError, TrinoUserError

    from asgard.features.trino_store import query_error_message

    address = "http://127.0.0.1:8095"
    slow = TrinoQueryError(
        {"errorName": "EXCEEDED_TIME_LIMIT", "errorType": "INSUFFICIENT_RESOURCES",
         "message": "Query exceeded maximum time limit of 60.00m"}, "20261208_000102_00003_abcde",
    )  # fmt: skip
    assert query_error_message(slow, address) == (
        "Trino, the feature store's offline store, at http://127.0.0.1:8095 ended query "
        "20261208_000102_00003_abcde: EXCEEDED_TIME_LIMIT: Query exceeded maximum time limit of 60.00m"
    )
    missing = TrinoExternalError({"errorName": "ICEBERG_FILESYSTEM_ERROR", "message": "no such file"}, None)
    assert query_error_message(missing, address).endswith("ended a query: ICEBERG_FILESYSTEM_ERROR: no such file")
    cancelled = TrinoUserError("Query has been cancelled", "q1")
    assert query_error_message(cancelled, address) == (
        "Trino, the feature store's offline store, at http://127.0.0.1:8095: query q1 was cancelled "
        "(Query has been cancelled)"
    )
    assert "no reason given" in query_error_message(TrinoQueryError({}, None), address)


def test_trino_is_a_production_service_launched_first_and_waited_for_last(tmp_path, monkeypatch):
    """Its start-up (the slowest of the profile's) overlaps the others' rather than adding to it; its
    catalog file is what ``./asgard trino-catalog`` prints, and no secret is written into it."""
    from asgard.local.production import ProductionServices

    monkeypatch.setattr(trino, "JVM_ROOT", tmp_path / "jvm")
    java_home = _jdk(tmp_path / "jvm", "temurin-25-jdk-amd64", "25.0.3")
    settings = Settings(home=tmp_path / "home", profile="production", database_prefix="asgard_ttrino")
    manager = ProductionServices(settings, base_env={"PATH": "/usr/bin"})
    services = manager.services()
    names = [service.name for service in services]
    assert names.index("trino") < names.index("api-server")  # launched before Airflow's migration runs
    service = manager.service("trino")
    assert service.slow_start and [other.name for other in services if other.slow_start] == ["trino"]
    assert service.health_url == "http://127.0.0.1:8095/v1/info"
    assert service.env["JAVA_HOME"] == str(java_home) and service.env["PATH"].startswith(f"{java_home}/bin:")
    assert service.env["ASGARD_GOLD_CATALOG_PASSWORD"] == manager._secrets()["postgres_password"]

    service.prepare()
    written = (trino.etc_dir(settings) / "catalog" / "iceberg.properties").read_text()
    monkeypatch.setattr(trino.os, "environ", {**trino.os.environ, **manager.platform_env()})
    assert written == gold.trino_catalog(settings)
    assert manager._secrets()["postgres_password"] not in written
    assert "iceberg.jdbc-catalog.connection-url=jdbc:postgresql://" in written


def test_a_trino_that_does_not_answer_is_named_in_the_error(tmp_path, monkeypatch):
    """A training set read through a Trino that is down fails saying so (its address in the message), before
    any query; an offline store that is not Trino is not checked."""
    from asgard.features import store as feature_store
    from conftest import free_port

    port = free_port()  # nothing listens there
    for name, value in {"TRINO_HOST": "127.0.0.1", "TRINO_PORT": str(port), "TRINO_USER": "asgard",
                        "ASGARD_FEAST_REGISTRY_URI": "postgresql+psycopg://asgard@127.0.0.1:1/asgard_feast",
                        "ASGARD_FEAST_REDIS": "127.0.0.1:1,db=6"}.items():  # fmt: skip
        monkeypatch.setenv(name, value)
    settings = Settings(home=tmp_path, profile="production", offline_store="trino")
    config = feature_store.load_repo_config(settings)
    assert config.offline_store.catalog == "memory"  # Feast's entity uploads never touch the gold layer
    with (
        pytest.raises(
            feature_store.OfflineStoreUnavailableError,
            match=rf"Trino, the feature store's offline store, does not answer at http://127.0.0.1:{port}",
        ),
        feature_store.offline_store_errors(config),
    ):
        pytest.fail("the query ran")
    embedded = feature_store.load_repo_config(Settings(home=tmp_path, airflow_port=1, mlflow_port=2))
    with feature_store.offline_store_errors(embedded):
        pass


def test_trinos_column_types_read_as_the_arrow_types_pyiceberg_reports():
    """``register_features`` checks a request against Trino's information_schema when Feast reads through
    Trino: its type names map to the Arrow types the same checks accept from pyiceberg."""
    import pyarrow as pa

    from asgard.features.store import arrow_type_of_trino

    assert arrow_type_of_trino("bigint") == pa.int64() and arrow_type_of_trino("integer") == pa.int32()
    assert arrow_type_of_trino("double") == pa.float64() and arrow_type_of_trino("real") == pa.float32()
    assert arrow_type_of_trino("varchar") == pa.string() and arrow_type_of_trino("boolean") == pa.bool_()
    assert arrow_type_of_trino("timestamp(6) with time zone") == pa.timestamp("us", tz="UTC")
    assert arrow_type_of_trino("timestamp(6)") == pa.timestamp("us")
    assert arrow_type_of_trino("decimal(10,2)") == pa.decimal128(10, 2)
    assert arrow_type_of_trino("array(bigint)") == pa.null()  # no feature, key or timestamp may be nested


def test_the_platform_check_skips_a_profile_without_trino_and_names_one_down_or_starting(monkeypatch):
    """check_platform's trino check: skipped where the platform's environment names no Trino; a Trino that does
    not answer, or answers that it is still starting, fails the check naming it and its address. (Its query of a
    real Trino runs in the production e2e test's main job.)"""
    import http.server
    import threading

    from asgard.api.platform_checks import PlatformCheckError, run_check
    from conftest import free_port

    for name in ("TRINO_HOST", "TRINO_PORT", "TRINO_USER"):
        monkeypatch.delenv(name, raising=False)
    assert run_check("trino", dag_id="check_platform", run_id="r")["skipped"].startswith("no Trino in the ")
    port = free_port()
    monkeypatch.setenv("TRINO_HOST", "127.0.0.1")
    monkeypatch.setenv("TRINO_PORT", str(port))
    with pytest.raises(PlatformCheckError, match=rf"^Trino does not answer at http://127.0.0.1:{port}: "):
        run_check("trino", dag_id="check_platform", run_id="r")

    class Starting(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = json.dumps({"starting": True, "nodeVersion": {"version": "476"}}).encode()
            self.send_response(200)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Starting)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with pytest.raises(PlatformCheckError, match=rf"^Trino is still starting at http://127.0.0.1:{port}$"):
            run_check("trino", dag_id="check_platform", run_id="r")
    finally:
        server.shutdown()
        server.server_close()


def test_a_scripts_feature_repo_reads_through_duckdb_behind_its_doors_never_the_platforms_trino(tmp_path):
    """Production's platform reads through Trino; a user script's feature_store.yaml names DuckDB (it reads the
    same Iceberg tables in its run's view, behind its doors) and neither the online store nor any Trino."""
    import yaml

    from asgard.features import store as feature_store

    settings = Settings(home=tmp_path, profile="production")
    assert yaml.safe_load(feature_store.store_yaml(settings))["offline_store"]["type"] == feature_store.TRINO_STORE_TYPE
    written = feature_store.write_script_repo(tmp_path / "repo", settings) / "feature_store.yaml"
    raw = yaml.safe_load(written.read_text())
    assert raw["offline_store"] == {"type": "duckdb"} and "online_store" not in raw
    assert "TRINO" not in written.read_text()


def test_a_source_trino_cannot_read_is_refused_by_name():
    from feast import FileSource

    from asgard.features.trino_store import as_trino_source

    with pytest.raises(ValueError, match="data source 'uploads' \\(FileSource\\) is not a gold-layer table"):
        as_trino_source(FileSource(name="uploads", path="/tmp/x.parquet", timestamp_field="ts"))


def test_the_main_job_says_which_queries_a_task_ran_through_trino():
    from asgard.local.stages import trino_reads_line

    log = (
        "[2026-12-07T20:01:02Z] {trino_store.py:120} INFO - Trino query 20261207_200102_00004_ab3cd (FINISHED) "
        "read the training set: CREATE TABLE memory.default.entity_x AS ...\n"
        "INFO - Trino query 20261207_200103_00005_ab3cd (FINISHED) read the training set: WITH entity_df AS\n"
    )
    assert trino_reads_line("train_model.build_training_set", log) == (
        "train_model.build_training_set: training set read through Trino "
        "(queries 20261207_200102_00004_ab3cd, 20261207_200103_00005_ab3cd)"
    )
    assert trino_reads_line("t", "nothing here") == "t: no read through Trino"


def test_entity_rows_go_to_trino_as_an_iceberg_table_dropped_with_its_files_and_swept_when_left(tmp_path, monkeypatch):
    """A training set's entity rows are uploaded for Trino as an Iceberg table of the gold catalog's uploads
    namespace (not as INSERT ... VALUES text, which past ~20k rows is more than Trino takes): the rows as they
    were (timestamps at Iceberg's microseconds) with their positions, dropped with their files once used; one a
    killed task left behind is swept by a later upload once older than any task may run."""
    from datetime import timedelta

    import pandas as pd

    from asgard.features import gold, trino_uploads

    monkeypatch.setenv("ASGARD_HOME", str(tmp_path))
    location = gold.GoldLocation.for_settings()
    times = ["2026-01-02T03:04:05.123456789", "2026-01-01T00:00:00", "2026-01-03T00:00:00"]
    frame = pd.DataFrame(
        {
            "customer_id": [3, 1, 2],
            "event_timestamp": pd.to_datetime(times, utc=True, format="ISO8601"),
            "churned": [True, False, None],
        }
    )
    upload = trino_uploads.upload_entity_rows(frame, location)
    assert upload.trino_name == f"iceberg.{upload.identifier}" and upload.identifier.startswith("feast_uploads.")
    catalog = gold.load_catalog(location)
    back = catalog.load_table(upload.identifier).scan().to_pandas()
    expected = frame.assign(event_timestamp=frame["event_timestamp"].dt.floor("us"), asgard_entity_row=[0, 1, 2])
    pd.testing.assert_frame_equal(back, expected, check_dtype=False)
    files = list((tmp_path / "data" / "gold").rglob("*.parquet"))
    assert files
    upload.drop()
    upload.drop()  # idempotent
    assert catalog.list_tables(trino_uploads.UPLOAD_NAMESPACE) == []
    assert not any(path.exists() for path in files)
    assert gold.list_tables(location) == []  # the gold namespace never sees an upload
    with pytest.raises(ValueError, match="may not have a column named 'asgard_entity_row'"):
        trino_uploads.upload_entity_rows(expected, location)

    left = trino_uploads.upload_entity_rows(frame, location)
    assert trino_uploads.sweep_uploads(catalog, location) == 0  # young: kept
    assert [".".join(i) for i in catalog.list_tables(trino_uploads.UPLOAD_NAMESPACE)] == [left.identifier]
    assert trino_uploads.sweep_uploads(catalog, location, older_than=timedelta(0)) == 1
    assert catalog.list_tables(trino_uploads.UPLOAD_NAMESPACE) == []
    # A sweep that cannot list fails nothing.
    assert trino_uploads.sweep_uploads(None, location) == 0

    # A drop that removed the table but not its files: its folder (named as it was) goes once old, a young
    # one (an upload being written: files before its table) and anything not named as an upload stay.
    uploads = tmp_path / "data" / "gold" / "warehouse" / "feast_uploads"
    leftover = trino_uploads.upload_entity_rows(frame, location)
    catalog.drop_table(leftover.identifier)  # the catalog's entry only
    leftover_folder = uploads / leftover.identifier.split(".")[1]
    assert list(leftover_folder.rglob("*.parquet"))
    other = uploads / "not_an_upload"
    other.mkdir()
    assert trino_uploads.sweep_uploads(catalog, location) == 0
    assert leftover_folder.exists()
    assert trino_uploads.sweep_uploads(catalog, location, older_than=timedelta(0)) == 0  # no table was dropped
    assert not leftover_folder.exists() and other.exists()
