"""Loading a user's own file into the gold layer: what is refused (every problem named, nothing written)
and how it is written (one snapshot, whole or not at all), on a real pyiceberg SQL catalog."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from asgard.core.errors import InputError
from asgard.features import gold
from asgard.features import gold_load as loader
from asgard.features.gold_load import GoldLoadError, LoadRequest

CSV = (
    "store_id,event_timestamp,footfall,basket,region\n"
    "1,2026-10-01T08:00:00,120,31.5,north\n"
    "2,2026-10-01 09:30,80,22.0,south\n"
    "3,2026-10-01T10:00:00+02:00,95,27.25,north\n"
)
REQUEST = LoadRequest("stores", "store_id", "event_timestamp")


@pytest.fixture
def location(tmp_path):
    root = tmp_path / "gold"
    return gold.GoldLocation("sql", warehouse=f"file://{root / 'warehouse'}", catalog_uri=f"sqlite:///{root / 'c.db'}")


def load(text: str, location, request: LoadRequest = REQUEST):
    return loader.load_bytes(text.encode(), "csv", request, location=location)


def state(location, table: str = "stores") -> tuple[int | None, int]:
    """The table's current snapshot and its rows (what any reader sees)."""
    found = gold.load_table(table, location)
    snapshot = found.current_snapshot()
    return (snapshot.snapshot_id if snapshot else None), found.scan().to_arrow().num_rows


def test_a_new_table_appends_and_replaces_are_one_snapshot_each(location):
    created = load(CSV, location)
    assert created.created and created.rows == 3 and created.total_rows == 3
    table = gold.load_table("stores", location)
    assert [s.summary.operation.value for s in table.snapshots()] == ["append"]
    assert table.properties[loader.ENTITY_PROPERTY] == "store_id"
    arrow = table.scan().to_arrow()
    assert arrow.schema.field("event_timestamp").type == pa.timestamp("us", tz="UTC")
    assert arrow.schema.field("footfall").type == pa.int64() and arrow.schema.field("basket").type == pa.float64()
    # Naive times are UTC; an offset is converted.
    assert sorted(t.isoformat() for t in arrow.column("event_timestamp").to_pylist())[0] == "2026-10-01T08:00:00+00:00"

    appended = load(CSV.replace("2026-10-01", "2026-10-02"), location)
    assert not appended.created and appended.total_rows == 6
    replaced = load(
        CSV.replace("2026-10-01", "2026-10-03"),
        location,
        LoadRequest("stores", "store_id", "event_timestamp", "replace"),
    )
    table = gold.load_table("stores", location)
    assert [s.summary.operation.value for s in table.snapshots()] == ["append", "append", "overwrite"]
    assert replaced.snapshot_id == table.current_snapshot().snapshot_id and replaced.total_rows == 3
    days = {t.day for t in table.scan().to_arrow().column("event_timestamp").to_pylist()}
    assert days == {3}
    # A Parquet file with int32 counts joins the table as its int64.
    frame = pa.table(
        {
            "store_id": pa.array([4], pa.int32()),
            "event_timestamp": pa.array(["2026-10-04T00:00:00"]),
            "footfall": pa.array([5], pa.int32()),
            "basket": [1.0],
            "region": ["east"],
        }
    )
    sink = pa.BufferOutputStream()
    pq.write_table(frame, sink)
    assert loader.load_bytes(sink.getvalue().to_pybytes(), "parquet", REQUEST, location=location).total_rows == 4


@pytest.mark.parametrize(
    ("text", "request_", "named"),
    [
        ("store_id,when,footfall\n1,2026-10-01,3\n", REQUEST, "timestamp column 'event_timestamp' is not in the file"),
        (
            "store_id,event_timestamp,x\n,2026-10-01,1\n2,2026-10-01,1\n",
            REQUEST,
            "entity column 'store_id' is empty in 1 row(s), e.g. row 1",
        ),
        ("store_id,event_timestamp,x\n1,yesterday,1\n2,2026-10-01,1\n", REQUEST, "'yesterday' at row 1"),
        (
            "store_id,event_timestamp,x\n1,2026-10-01,1\n1,2026-10-01T00:00:00Z,2\n",
            REQUEST,
            "1 (store_id, event_timestamp) pair(s) appear more than once",
        ),
        ("store_id,event_timestamp,x\n1.5,2026-10-01,1\n", REQUEST, "entity column 'store_id' is double"),
        ("store_id,event_timestamp,x\n", REQUEST, "the file has no rows"),
        ("store_id,event_timestamp,x,x\n1,2026-10-01,1,2\n", REQUEST, "column 'x' appears twice"),
        ("store_id,event_timestamp,bad name\n1,2026-10-01,1\n", REQUEST, "column name 'bad name'"),
        ("store_id,event_timestamp,x\n1,2026-10-01,\n", REQUEST, "column 'x' has no values"),
        (CSV, LoadRequest("gold;drop", "store_id", "event_timestamp"), "table 'gold;drop' is not a name"),
        # Trino reads the gold layer: a trailing newline, or a reserved word, would break the SQL it runs.
        (CSV, LoadRequest("stores\n", "store_id", "event_timestamp"), "table 'stores\\n' is not a name"),
        (
            "store_id,event_timestamp,order\n1,2026-10-01,1\n",
            REQUEST,
            "column name 'order' is not one the gold layer takes (a reserved word of SQL",
        ),
        (CSV, LoadRequest("Select", "store_id", "event_timestamp"), "table 'Select' is not a name"),
        (CSV, LoadRequest("stores", "store_id", "store_id"), "the entity and timestamp columns are both"),
        (CSV, LoadRequest("stores", "store_id", "event_timestamp", "upsert"), "mode 'upsert'"),
    ],
)
def test_a_file_that_cannot_be_a_new_table_is_refused_naming_why(location, text, request_, named):
    with pytest.raises(GoldLoadError) as refused:
        load(text, location, request_)
    assert named in str(refused.value)
    assert isinstance(refused.value, InputError)  # a 422 through the API, a failed task without retries
    assert gold.list_tables(location) == []


@pytest.mark.parametrize(
    ("text", "request_", "named"),
    [
        (
            CSV.replace(",region", "").replace(",north", "").replace(",south", ""),
            REQUEST,
            "columns the file lacks: region",
        ),
        (
            CSV.replace("region\n", "region,extra\n").replace("north\n", "north,1\n").replace("south\n", "south,1\n"),
            REQUEST,
            "columns table 'stores' does not: extra",
        ),
        (CSV.replace("120", "many"), REQUEST, "column 'footfall'"),
        (
            CSV.replace("store_id", "shop_id"),
            LoadRequest("stores", "shop_id", "event_timestamp"),
            "keyed by entity column 'store_id', not 'shop_id'",
        ),
        ("not,a\ncsv\x00\x01", REQUEST, "is not readable csv"),
    ],
)
def test_a_file_that_does_not_fit_the_existing_table_changes_nothing(location, text, request_, named):
    load(CSV, location)
    before = state(location)
    with pytest.raises(GoldLoadError, match=named.replace("(", r"\(").replace(")", r"\)")):
        load(text, location, request_)
    assert state(location) == before


def test_unsupported_types_and_a_typed_parquet_mismatch_are_named(location):
    frame = pa.table({"store_id": [1], "event_timestamp": ["2026-10-01"], "tags": pa.array([["a"]])})
    sink = pa.BufferOutputStream()
    pq.write_table(frame, sink)
    with pytest.raises(GoldLoadError, match=r"column 'tags' is list<element: string>; the gold layer keeps"):
        loader.load_bytes(sink.getvalue().to_pybytes(), "parquet", REQUEST, location=location)
    with pytest.raises(GoldLoadError, match="upload is not readable parquet"):
        loader.load_bytes(b"PAR1 not really", "parquet", REQUEST, location=location)
    # A binary file sent as CSV (the API fuzzer's PNG): arrow reads it, but its column names are not text.
    png = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x01\x08\x00:~\x9bU\x00IEND\xaeB`\x82"
    with pytest.raises(GoldLoadError, match="upload is not readable csv: its column names are not UTF-8 text"):
        loader.load_bytes(png, "csv", REQUEST, location=location)


@pytest.mark.parametrize("mode", ["append", "replace", "new"])
def test_a_write_that_fails_midway_leaves_the_table_as_it_was(location, monkeypatch, mode):
    """The data files are written, then the catalog commit fails: no reader ever sees the rows."""
    import pyiceberg.io.pyarrow as pyiceberg_arrow

    if mode != "new":
        load(CSV, location)
        before = state(location)
    real = pyiceberg_arrow._dataframe_to_data_files

    def first_file_then_crash(**kwargs):
        yield from real(**kwargs)
        raise OSError("disk full")

    monkeypatch.setattr(pyiceberg_arrow, "_dataframe_to_data_files", first_file_then_crash)
    request = LoadRequest("stores", "store_id", "event_timestamp", "replace" if mode == "replace" else "append")
    with pytest.raises(OSError, match="disk full"):
        load(CSV.replace("2026-10-01", "2026-10-05"), location, request)
    if mode == "new":
        assert gold.list_tables(location) == []
    else:
        assert state(location) == before


def test_a_path_is_read_only_in_the_callers_team_roots_and_never_in_the_platforms_folders(
    location, data_folder, tmp_path, monkeypatch
):
    from asgard.core.settings import Settings

    monkeypatch.setenv("ASGARD_HOME", str(tmp_path / "home"))
    file = data_folder / "stores.csv"
    file.write_text(CSV)
    assert loader.load_path(str(file), REQUEST, team="default", location=location).rows == 3
    with pytest.raises(
        InputError, match="outside the data roots of team 'beta'"
    ):  # the gold layer is shared; files are not
        loader.load_path(str(file), REQUEST, team="beta", location=location)
    own = Settings.from_env().data_dir / "gold" / "leak.csv"
    own.parent.mkdir(parents=True)
    own.write_text(CSV)
    with pytest.raises(InputError, match="inside the platform's own folder"):
        loader.load_path(str(own), REQUEST, team="default", location=location)
    with pytest.raises(InputError, match="outside the data roots"):
        loader.load_path("/etc/passwd.csv", REQUEST, team="default", location=location)
    with pytest.raises(GoldLoadError, match="cannot tell its format"):
        loader.load_path(str(data_folder / "stores.txt"), REQUEST, team="default", location=location)


def test_the_production_catalog_postgresql_and_s3(moto_server, monkeypatch, tmp_path):
    """The production profile's gold layer: pyiceberg's SQL catalog in PostgreSQL, data files on S3 (moto);
    a file loaded from the body, then replaced from an s3:// path through the AWS connection."""
    import json
    import uuid

    import sqlalchemy as sa
    from airflow.providers.amazon.aws.hooks.s3 import S3Hook

    from conftest import TEST_DATA_BUCKET, postgres_url

    connection = {"conn_type": "aws", "login": "k", "password": "s", "extra": {"endpoint_url": moto_server}}
    monkeypatch.setenv("AIRFLOW_CONN_AWS_DEFAULT", json.dumps(connection))
    for key, value in (("S3__ENDPOINT", moto_server), ("S3__ACCESS_KEY_ID", "k"), ("S3__SECRET_ACCESS_KEY", "s"),
                       ("S3__REGION", "us-east-1")):  # fmt: skip
        monkeypatch.setenv(f"PYICEBERG_CATALOG__GOLD__{key}", value)
    S3Hook().create_bucket("asgard-gold-load")
    name = f"asgard_gold_load_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(postgres_url(), isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(sa.text(f'CREATE DATABASE "{name}"'))
    try:
        location = gold.GoldLocation(
            "sql", "s3://asgard-gold-load/gold", catalog_uri=postgres_url(name), catalog_name="gold"
        )
        assert load(CSV, location).created
        replacement = pa.table({"store_id": [9], "event_timestamp": ["2026-10-09"], "footfall": [1],
                                "basket": [2.0], "region": ["west"]})  # fmt: skip
        pq.write_table(replacement, tmp_path / "r.parquet")
        S3Hook().create_bucket(TEST_DATA_BUCKET)  # the suite's S3 data root: the default team's folder in it
        S3Hook().load_file(str(tmp_path / "r.parquet"), "default/incoming/r.parquet", bucket_name=TEST_DATA_BUCKET)
        request = LoadRequest("stores", "store_id", "event_timestamp", "replace")
        uri = f"s3://{TEST_DATA_BUCKET}/default/incoming/r.parquet"
        replaced = loader.load_path(uri, request, team="default", location=location)
        assert replaced.total_rows == 1
        rows = gold.load_table("stores", location).scan().to_arrow().to_pylist()
        assert [(row["store_id"], row["region"]) for row in rows] == [(9, "west")]
        files = S3Hook().list_keys("asgard-gold-load", prefix="gold/")
        assert any(key.endswith(".parquet") for key in files) and any(key.endswith(".metadata.json") for key in files)
    finally:
        with admin.connect() as connection:
            connection.execute(sa.text(f'DROP DATABASE "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.mark.parametrize("first", ["append", "create"])
def test_a_load_that_another_load_overtook_is_checked_again_and_commits_after_it(location, monkeypatch, first):
    """Another load commits between this one's check and its commit: the catalog refuses the stale
    commit, and the load is checked against the table as it is now and written after the other."""
    if first == "append":
        load(CSV, location)
    real_write, overtaken = loader._write, []

    def overtaken_once(catalog, existing, data, request, source):
        if not overtaken:
            overtaken.append(True)
            load(CSV.replace("2026-10-01", "2026-10-07"), location)  # the other load, committed first
        return real_write(catalog, existing, data, request, source)

    monkeypatch.setattr(loader, "_write", overtaken_once)
    result = load(CSV.replace("2026-10-01", "2026-10-08"), location)
    table = gold.load_table("stores", location)
    expected = 9 if first == "append" else 6
    assert result.total_rows == expected and table.scan().to_arrow().num_rows == expected
    assert not result.created and len(table.snapshots()) == expected // 3


def test_a_table_is_its_creating_teams_and_only_it_or_an_admin_loads_into_it(location):
    from asgard.core.teams import TeamRefusal

    alpha = LoadRequest("stores", "store_id", "event_timestamp", team="alpha")
    assert load(CSV, location, alpha).created
    assert gold.load_table("stores", location).properties[loader.TEAM_PROPERTY] == "alpha"
    snapshot = state(location)
    later = CSV.replace("2026-10-01", "2026-10-02")
    for mode in ("append", "replace"):
        with pytest.raises(TeamRefusal, match=f"belongs to team 'alpha': a load for team 'beta' may not {mode}"):
            load(later, location, LoadRequest("stores", "store_id", "event_timestamp", mode, team="beta"))
    assert state(location) == snapshot
    assert load(later, location, alpha).total_rows == 6
    admin = LoadRequest("stores", "store_id", "event_timestamp", team="beta", any_table=True)
    assert load(CSV.replace("2026-10-01", "2026-10-03"), location, admin).total_rows == 9

    # A table no team's load made (the seed's, another tool's): every team reads it, only an admin loads.
    assert load(CSV, location, LoadRequest("shared", "store_id", "event_timestamp")).created
    with pytest.raises(TeamRefusal, match="'shared' was not made by a team's gold load"):
        load(later, location, LoadRequest("shared", "store_id", "event_timestamp", team="alpha"))
    assert state(location, "shared")[1] == 3


@pytest.mark.parametrize("name", ["customer_features\n", "a b", "1st", ""])
def test_a_conf_name_with_a_trailing_newline_is_refused_like_any_other_non_name(name):
    """Python's "$" also matches before a final newline: the identifier Params (what reaches SQL as a table or
    column name) refuse one, as they refuse any other name that is not letters, digits and '_'."""
    from airflow.sdk import Param
    from airflow.sdk.definitions.param import ParamValidationError

    from asgard.core.param_schemas import IDENTIFIER

    assert Param("customer_features", **IDENTIFIER).resolve() == "customer_features"
    with pytest.raises(ParamValidationError):
        Param(name, **IDENTIFIER).resolve()
