"""The MLflow door lets through exactly its run's requests: no spelling of a path climbs out of it.

Every hostile form is sent byte for byte (a raw HTTP request on the door's unix socket: a client
library would normalize it first) through the real door to a real MLflow server, with a recording
relay between them: each is answered 403 and none reaches MLflow; the honest requests beside them
pass, and upstream receives exactly the path that was checked.
"""

from __future__ import annotations

import json
import socket
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from asgard.hooks.mlflow_gateway import Gateway, RunScope, path_refusal


class RecordingRelay:
    """An HTTP relay in front of MLflow that records every request target it receives, unchanged."""

    def __init__(self, upstream: str) -> None:
        self.upstream, self.targets = upstream.rstrip("/"), []
        relay = self

        class Handler(BaseHTTPRequestHandler):
            def _relay(self) -> None:
                relay.targets.append(self.path)
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                url = httpx.URL(relay.upstream).copy_with(raw_path=self.path.encode())
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "connection")}
                answer = httpx.request(self.command, url, content=body, headers=headers, timeout=60)
                self.send_response(answer.status_code)
                for name, value in answer.headers.items():
                    if name.lower() not in ("transfer-encoding", "connection", "content-encoding", "content-length"):
                        self.send_header(name, value)
                self.send_header("Content-Length", str(len(answer.content)))
                self.end_headers()
                self.wfile.write(answer.content)

            do_GET = do_PUT = do_POST = do_DELETE = do_PATCH = _relay

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


# What the door's run may upload in all, in these tests (the platform gives a run its script's disk cap).
ALLOWANCE = 1024 * 1024


def with_length(body: bytes) -> bytes:
    return b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n"


def raw_request(
    socket_path: Path,
    method: str,
    target: bytes,
    body: bytes = b"",
    content_type: bytes = b"application/octet-stream",
    framing=with_length,
) -> tuple[int, bytes]:
    """Send ``target`` exactly as given (no normalization) and return the status and body."""
    with socket.socket(socket.AF_UNIX) as connection:
        connection.settimeout(60)
        connection.connect(str(socket_path))
        connection.sendall(
            method.encode() + b" " + target + b" HTTP/1.1\r\nHost: mlflow\r\nConnection: close\r\n"
            b"Content-Type: " + content_type + b"\r\n" + framing(body) + body
        )
        answer = b""
        while chunk := connection.recv(65536):
            answer += chunk
    head, _, payload = answer.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), payload


@pytest.fixture(scope="module")
def door(embedded_stack, tmp_path_factory):
    """A door scoped to one run of a fresh experiment, a victim run beside it holding an artifact."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=embedded_stack.settings.mlflow_url)
    name = f"door-{uuid.uuid4().hex[:8]}"
    experiment = client.create_experiment(name)
    victim, own = client.create_run(experiment), client.create_run(experiment)
    victim_file = tmp_path_factory.mktemp("victim") / "model.pkl"
    victim_file.write_bytes(b"the champion's pickle")
    client.log_artifact(victim.info.run_id, str(victim_file))
    relay = RecordingRelay(embedded_stack.settings.mlflow_url)
    scope = RunScope(own.info.run_id, experiment, name, max_artifact_bytes=ALLOWANCE)
    sockets = Path(tmp_path_factory.mktemp("sock", numbered=True))
    with Gateway(relay.url, scope, sockets / "mlflow.sock").serving() as socket_path:
        yield {
            "socket": socket_path,
            "relay": relay,
            "client": client,
            "own": f"/api/2.0/mlflow-artifacts/artifacts/{experiment}/{own.info.run_id}/artifacts".encode(),
            "victim_run": victim.info.run_id,
            "own_run": own.info.run_id,
            "experiment": experiment,
        }
    relay.close()


def climbs(door) -> dict[str, bytes]:
    """Each way a path could leave the run's artifacts, as the raw target a hostile script sends."""
    own, victim, exp = door["own"], door["victim_run"].encode(), str(door["experiment"]).encode()
    to_victim = b"/" + victim + b"/artifacts/model.pkl"
    return {
        "encoded dots": own + b"/%2e%2e/%2e%2e" + to_victim,
        "upper-case encoded dots": own + b"/%2E%2E/%2E%2E" + to_victim,
        "mixed dots": own + b"/.%2e/%2e." + to_victim,
        "literal dots": own + b"/../.." + to_victim,
        "a single dot": own + b"/./model.pkl",
        "an encoded single dot": own + b"/%2e/model.pkl",
        "encoded slashes": own + b"/..%2f..%2f" + victim + b"%2fartifacts%2fmodel.pkl",
        "upper-case encoded slash": own + b"/x%2Fy",
        "doubly encoded dots": own + b"/%252e%252e/%252e%252e" + to_victim,
        "doubly encoded slash": own + b"/..%252f..%252f" + victim,
        "an encoded backslash": own + b"/..%5c..%5c" + victim,
        "a raw backslash": own + b"/..\\..\\" + victim,
        "an empty segment": own + b"//model.pkl",
        "a trailing empty segment": own + b"/",
        "a NUL escape": own + b"/model.pkl%00.txt",
        "a bare percent": own + b"/100%.txt",
        "up to the registry": own + b"/%2e%2e/%2e%2e/%2e%2e/%2e%2e/%2e%2e/mlflow/registered-models/search",
        "the experiment's other run directly": b"/api/2.0/mlflow-artifacts/artifacts/" + exp + to_victim,
    }


def test_every_climbing_path_is_refused_before_it_reaches_mlflow(door):
    relay, before = door["relay"], len(door["relay"].targets)
    for name, target in climbs(door).items():
        for method in ("PUT", "GET", "DELETE"):
            status, body = raw_request(door["socket"], method, target, b"pwned" if method == "PUT" else b"")
            assert status == 403, f"{name} ({method} {target!r}): {status} {body[:200]!r}"
            assert b"PERMISSION_DENIED" in body, name
    assert relay.targets[before:] == [], "a refused request reached MLflow"
    # The victim's artifact is as it was.
    victim = door["client"].download_artifacts(door["victim_run"], "model.pkl")
    assert Path(victim).read_bytes() == b"the champion's pickle"


def test_the_runs_own_requests_pass_exactly_as_they_were_checked(door):
    relay, own = door["relay"], door["own"]
    target = own + b"/notes/a%20plot%20%28v1%29.txt"
    before = len(relay.targets)
    status, _ = raw_request(door["socket"], "PUT", target, b"mine")
    assert status == 200
    status, body = raw_request(door["socket"], "GET", target)
    assert (status, body) == (200, b"mine")
    assert relay.targets[before:] == [target.decode()] * 2
    # MLflow stored it where the path said, in this run.
    run_id = own.split(b"/")[-2].decode()
    listed = [item.path for item in door["client"].list_artifacts(run_id, "notes")]
    assert listed == ["notes/a plot (v1).txt"]


@pytest.mark.parametrize(
    "raw, refused",
    [
        (b"/api/2.0/mlflow/runs/get", False),
        (b"/a/b%20c", False),
        (b"/a/%7e", False),
        (b"/a/%2E", True),
        (b"/a/%2f", True),
        (b"/a/%25", True),
        (b"/a/%5C", True),
        (b"/a/%0a", True),
        (b"/a/%7F", True),
        (b"/a/%", True),
        (b"/a/%g1", True),
        (b"/a//b", True),
        (b"/a/.", True),
        (b"a/b", True),
        (b"/a/\xc3\xa9", True),
        (b"/a b", True),
    ],
)
def test_path_rules(raw, refused):
    assert (path_refusal(raw) is not None) == refused


def test_a_script_may_not_forge_the_platforms_run_tags(door):
    """The platform finds a DAG run's MLflow run, and trusts what it logged, by tags a script may not
    write: a train_script run relabelled as a train_model run would have its pickle registered as
    platform-trained and loaded by the gate (found by a hostile review)."""
    relay, own = door["relay"], door["own_run"]
    api = b"/api/2.0/mlflow/runs/"
    forged = {
        "set-tag airflow.run_id": (b"set-tag", {"run_id": own, "key": "airflow.run_id", "value": "manual__x"}),
        "set-tag airflow.dag_id": (b"set-tag", {"run_id": own, "key": "airflow.dag_id", "value": "train_model"}),
        "delete-tag airflow.dag_id": (b"delete-tag", {"run_id": own, "key": "airflow.dag_id"}),
        "log-batch asgard.origin": (
            b"log-batch",
            {"run_id": own, "tags": [{"key": "ok", "value": "1"}, {"key": "asgard.origin", "value": "train_model"}]},
        ),
        "set-tag gate.decision": (b"set-tag", {"run_id": own, "key": "gate.decision", "value": "promoted"}),
        "a key that is no string": (b"set-tag", {"run_id": own, "key": ["airflow.dag_id"], "value": "x"}),
    }
    before = len(relay.targets)
    for name, (call, body) in forged.items():
        status, answer = raw_request(door["socket"], "POST", api + call, json.dumps(body).encode(), b"application/json")
        assert status == 403 and b"PERMISSION_DENIED" in answer, f"{name}: {status} {answer[:200]!r}"
    assert relay.targets[before:] == []
    # The run's own tags pass, and the forged ones are not on it.
    status, _ = raw_request(
        door["socket"], "POST", api + b"set-tag", json.dumps({"run_id": own, "key": "note", "value": "mine"}).encode(),
        b"application/json",
    )  # fmt: skip
    assert status == 200
    tags = door["client"].get_run(own).data.tags
    assert tags["note"] == "mine" and not [key for key in tags if key.startswith(("airflow.", "asgard.", "gate."))]


def test_a_body_naming_another_run_by_a_json_alias_or_twice_is_refused(door):
    """MLflow reads a body's keys by their JSON names too (``runId`` beside ``run_uuid``) and uses the one
    the door did not check (found by a hostile review: a metric logged into another team's champion run)."""
    relay, own, victim = door["relay"], door["own_run"], door["victim_run"]
    api = b"/api/2.0/mlflow/runs/"
    metric = {"key": "auc", "value": 0.99, "timestamp": 0}
    forged = {
        "runId beside run_uuid": (b"log-metric", {"runId": victim, "run_uuid": own, **metric}),
        "runUuid beside run_id": (b"log-metric", {"runUuid": victim, "run_id": own, **metric}),
        "a renamed run": (b"update", {"runId": victim, "run_uuid": own, "run_name": "pwned"}),
        "a nested camelCase key": (
            b"log-batch",
            {"run_id": own, "metrics": [{"key": "a", "value": 1, "timeStamp": 0}]},
        ),
    }
    before = len(relay.targets)
    for name, (call, body) in forged.items():
        status, answer = raw_request(door["socket"], "POST", api + call, json.dumps(body).encode(), b"application/json")
        assert status == 403 and b"snake_case" in answer, f"{name}: {status} {answer[:200]!r}"
    twice = f'{{"run_id": "{own}", "run_id": "{victim}", "key": "auc", "value": 1, "timestamp": 0}}'.encode()
    status, answer = raw_request(door["socket"], "POST", api + b"log-metric", twice, b"application/json")
    assert status == 403 and b"given twice" in answer, answer[:200]
    assert relay.targets[before:] == []
    assert door["client"].get_run(victim).data.metrics == {}


def test_a_repeated_query_key_is_refused(door):
    """Checked here with one value and read upstream with another (MLflow takes the first): refused."""
    relay, own, victim = door["relay"], door["own_run"], door["victim_run"]
    before = len(relay.targets)
    for target in (
        f"/api/2.0/mlflow/runs/get?run_id={victim}&run_id={own}",
        f"/api/2.0/mlflow/runs/get?run_id={own}&run_id={victim}",
        f"/api/2.0/mlflow/experiments/get?experiment_id=0&experiment_id={door['experiment']}",
    ):
        status, answer = raw_request(door["socket"], "GET", target.encode())
        assert status == 403 and b"given more than once" in answer, (target, status, answer[:200])
    assert relay.targets[before:] == []
    status, _ = raw_request(door["socket"], "GET", f"/api/2.0/mlflow/runs/get?run_id={own}".encode())
    assert status == 200


def test_a_runs_artifacts_hold_no_more_than_its_allowance(door):
    """Artifacts stream to MLflow counted against the run's allowance; an upload that would pass it is a
    413, whether it says its length (refused before a byte is read) or is chunked (stopped at the byte
    that passes it); the tracking API's bodies are capped too."""
    own, relay = door["own"], door["relay"]

    def declared_only(body: bytes) -> bytes:  # says its length, sends nothing: the door must not wait for it
        return b"Content-Length: " + str(ALLOWANCE + 1).encode() + b"\r\n\r\n"

    def chunked(body: bytes) -> bytes:
        return b"Transfer-Encoding: chunked\r\n\r\n"

    status, answer = raw_request(door["socket"], "PUT", own + b"/big.bin", framing=declared_only)
    assert status == 413 and b"more than 1048576 bytes" in answer, (status, answer[:200])
    status, _ = raw_request(door["socket"], "PUT", own + b"/half.bin", b"y" * (ALLOWANCE // 2))
    assert status == 200
    rest = ALLOWANCE // 2 + 1
    body = hex(rest)[2:].encode() + b"\r\n" + b"z" * rest + b"\r\n0\r\n\r\n"
    status, answer = raw_request(door["socket"], "PUT", own + b"/other-half.bin", body, framing=chunked)
    assert status == 413 and b"more than 1048576 bytes" in answer, (status, answer[:200])
    run_id = own.split(b"/")[-2].decode()
    assert "big.bin" not in [item.path for item in door["client"].list_artifacts(run_id)]
    before = len(relay.targets)
    oversized = b"{" + b" " * (16 * 1024 * 1024 - 1) + b"}"  # one byte over: read whole, then refused
    status, answer = raw_request(
        door["socket"], "POST", b"/api/2.0/mlflow/runs/log-batch", oversized, b"application/json"
    )
    assert status == 413 and relay.targets[before:] == [], (status, answer[:200])
