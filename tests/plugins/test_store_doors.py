"""A user script's doors to the production feature store: what they let through, for real.

The S3 door is checked from inside a real sandbox against moto's S3 checking keys and signatures,
with a reader whose keys would allow anything (the door is what stops a script). The reader role is
checked on the machine's PostgreSQL.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import boto3
import psycopg
import pytest

from asgard.core.sandbox import Limits
from asgard.core.settings import get_settings
from asgard.local.postgres import DATABASES
from asgard.training.scripts import runner, store_doors
from asgard.training.scripts.store_doors import StoreAccess, s3_refusal
from conftest import running_moto

READABLE = "asgard/gold"


@pytest.mark.parametrize(
    ("method", "path", "query", "allowed"),
    [
        ("GET", "/asgard/gold/db/t/data/0.parquet", {}, True),
        ("HEAD", "/asgard/gold/db/t/metadata/v1.json", {}, True),
        ("GET", "/asgard", {"list-type": "2", "prefix": "gold/db/"}, True),
        ("HEAD", "/asgard", {}, True),
        ("PUT", "/asgard/gold/db/t/data/0.parquet", {}, False),
        ("DELETE", "/asgard/gold/db/t/data/0.parquet", {}, False),
        ("POST", "/asgard", {"delete": ""}, False),
        ("GET", "/asgard/runs/secret.json", {}, False),
        ("GET", "/asgard/gold/../runs/secret.json", {}, False),
        ("GET", "/asgard/golden/x", {}, False),
        ("GET", "/asgard", {"list-type": "2", "prefix": "runs/"}, False),
        ("GET", "/asgard", {"list-type": "2"}, False),
        ("GET", "/asgard", {"policy": ""}, False),
        ("GET", "/other/gold/x", {}, False),
    ],
)
def test_the_s3_door_reads_the_gold_warehouse_only(method, path, query, allowed):
    assert (s3_refusal(method, path, query, READABLE) is None) is allowed


# Plain HTTP from inside the sandbox, unsigned: the door signs what it passes on, and the server
# checks that signature. Each request's status and body, by name; then whether the script could see
# any S3 key but the door's placeholder.
PROBE = """
import json, os, urllib.request, urllib.error
requests = {
    "read": ("GET", "/asgard/gold/db/t/data/0.parquet", None),
    "read a range": ("GET", "/asgard/gold/db/t/data/0.parquet", None, {"Range": "bytes=0-3"}),
    "list gold": ("GET", "/asgard?list-type=2&prefix=gold/", None),
    "overwrite": ("PUT", "/asgard/gold/db/t/data/0.parquet", b"garbage"),
    "write beside": ("PUT", "/asgard/gold/db/t/data/new.parquet", b"garbage"),
    "delete": ("DELETE", "/asgard/gold/db/t/data/0.parquet", None),
    "read a run's file": ("GET", "/asgard/runs/secret.json", None),
    "list runs": ("GET", "/asgard?list-type=2&prefix=runs/", None),
    "climb out": ("GET", "/asgard/gold/%2E%2E/runs/secret.json", None),
    # Checked with the last prefix, read by the server with the first (the whole bucket's keys).
    "a repeated prefix": ("GET", "/asgard?list-type=2&prefix=&prefix=gold/", None),
}
answers = {}
for name, (method, path, body, *headers) in requests.items():
    url = "http://127.0.0.1:9000" + path
    request = urllib.request.Request(url, data=body, method=method, headers=(headers or [{}])[0])
    try:
        with urllib.request.urlopen(request, timeout=20) as answer:
            answers[name] = [answer.status, answer.read().decode(errors="replace")]
    except urllib.error.HTTPError as error:
        answers[name] = [error.code, error.read().decode(errors="replace")]
answers["environment"] = dict(os.environ)
print(json.dumps(answers))
"""


@pytest.fixture
def s3_with_keys():
    """moto checking keys and signatures, an administrator's keys, and a reader whose keys may do
    anything in the bucket (a careless grant: the door alone must keep scripts to reading gold)."""
    with running_moto({"INITIAL_NO_AUTH_ACTION_COUNT": "3"}) as url:
        where = {"endpoint_url": url, "region_name": "us-east-1"}

        def user(iam, name: str, actions: str) -> dict[str, str]:
            iam.create_user(UserName=name)
            statement = {"Effect": "Allow", "Action": actions, "Resource": "*"}
            policy = json.dumps({"Version": "2012-10-17", "Statement": [statement]})
            iam.put_user_policy(UserName=name, PolicyName="access", PolicyDocument=policy)
            key = iam.create_access_key(UserName=name)["AccessKey"]
            return {"aws_access_key_id": key["AccessKeyId"], "aws_secret_access_key": key["SecretAccessKey"]}

        # The administrator is made by the three requests moto lets through unchecked.
        admin = user(boto3.client("iam", aws_access_key_id="-", aws_secret_access_key="-", **where), "admin", "*")
        reader = user(boto3.client("iam", **admin, **where), "reader", "s3:*")
        yield url, boto3.client("s3", **admin, **where), reader


def test_a_sandboxed_script_reads_gold_through_the_s3_door_and_changes_nothing(s3_with_keys, tmp_path):
    url, s3, reader = s3_with_keys
    s3.create_bucket(Bucket="asgard")
    s3.put_object(Bucket="asgard", Key="gold/db/t/data/0.parquet", Body=b"gold rows")
    s3.put_object(Bucket="asgard", Key="runs/secret.json", Body=b"another user's run")
    access = StoreAccess(
        postgres_host="127.0.0.1", postgres_port=5432, user="reader", password="unused",
        registry_database="r", gold_database="g", s3_endpoint=url, s3_access_key=reader["aws_access_key_id"],
        s3_secret_key=reader["aws_secret_access_key"], s3_readable=READABLE,
    )  # fmt: skip
    python = Path(get_settings().script_python)
    env = runner.script_environment(python, {name: "x" for name in runner.INJECTED}, {})
    env.update(access.script_variables())  # as a script run's environment gets them
    lines: list[str] = []
    with tempfile.TemporaryDirectory(prefix="asgard-doors-") as folder:
        sockets = Path(folder)
        sockets.chmod(0o755)
        with store_doors.opened(access, sockets) as doors:
            (sockets / "mlflow.sock").touch()  # the run's MLflow door is not under test here
            script = runner.UserScript("probe.py", PROBE)
            runner.run_script(script, python, tmp_path / "work", env, Limits(timeout_seconds=60),
                              sockets=sockets, doors=doors, output=lines.append)  # fmt: skip
    answers = json.loads(lines[-1])
    # Signed by the door with the reader's keys, checked by the server.
    assert answers["read"] == [200, "gold rows"]
    assert answers["read a range"] == [206, "gold"]
    assert answers["list gold"][0] == 200 and "gold/db/t/data/0.parquet" in answers["list gold"][1]
    assert "given more than once: prefix" in answers["a repeated prefix"][1]
    for refused in ("overwrite", "write beside", "delete", "read a run's file", "list runs", "climb out",
                    "a repeated prefix"):  # fmt: skip
        status, body = answers[refused]
        assert status == 403 and "<Code>AccessDenied</Code>" in body, (refused, answers[refused])
    assert "not open to user scripts" in answers["delete"][1]
    assert "outside asgard/gold" in answers["read a run's file"][1]
    # The reader's S3 keys never entered the sandbox.
    seen = json.dumps(answers["environment"])
    assert reader["aws_secret_access_key"] not in seen and reader["aws_access_key_id"] not in seen
    assert answers["environment"]["PYICEBERG_CATALOG__GOLD__S3__ACCESS_KEY_ID"] == store_doors.DOOR_KEY
    # Nothing changed in the bucket.
    keys = sorted(item["Key"] for item in s3.list_objects_v2(Bucket="asgard")["Contents"])
    assert keys == ["gold/db/t/data/0.parquet", "runs/secret.json"]
    assert s3.get_object(Bucket="asgard", Key="gold/db/t/data/0.parquet")["Body"].read() == b"gold rows"


def test_the_reader_role_selects_in_the_feature_store_and_reaches_nothing_else(profile_databases):
    profile, passwords = profile_databases

    def connect(role: str, password: str, purpose: str) -> psycopg.Connection:
        return psycopg.connect(host="127.0.0.1", port=5432, user=role, password=password,
                               dbname=profile.name(purpose), autocommit=True)  # fmt: skip

    with connect(profile.role, passwords["postgres_password"], "gold") as owner:
        owner.execute("CREATE TABLE rows (id int)")
        owner.execute("INSERT INTO rows VALUES (1)")
    reader = (profile.reader_role, passwords["reader_password"])
    with connect(*reader, "gold") as connection:
        assert connection.execute("SELECT id FROM rows").fetchall() == [(1,)]
        for statement in ("DELETE FROM rows", "CREATE TABLE mine (id int)", "CREATE TEMP TABLE mine (id int)"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                connection.execute(statement)
    for purpose in sorted(set(DATABASES) - {"feast", "gold"}):  # Airflow's, MLflow's, monitoring's
        with pytest.raises(psycopg.OperationalError, match="permission denied for database"):
            connect(*reader, purpose)
    # Preparing again (every start does) keeps it so.
    profile.prepare(log=lambda message: None)
    with pytest.raises(psycopg.OperationalError, match="permission denied for database"):
        connect(*reader, "airflow")


def test_two_starts_at_once_prepare_the_databases_one_after_the_other(profile_databases):
    """Every ./asgard start prepares the roles and grants: two at once (a worker and the scheduler
    started side by side) must not collide on PostgreSQL's catalog rows."""
    from concurrent.futures import ThreadPoolExecutor

    profile, _ = profile_databases
    with ThreadPoolExecutor(max_workers=4) as pool:
        outcomes = list(pool.map(lambda _: profile.prepare(log=lambda message: None), range(8)))
    assert outcomes == [None] * 8
