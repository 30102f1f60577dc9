"""Soak: the serving container and the Airflow API server under steady honest load, with a hostile request
mixed in every second.

Two targets, one after the other:
- **serving**: one serving image of the sample LightGBM model (the real builder, on the stack's Docker
  engine), one container; honest load is a 1-row ``/invocations``. Hostile: the n² records body at
  1 MB, a body over the size limit sent chunked, ``NaN``, a deeply nested value, a 1 MB string, an
  unknown column. Memory: the engine's count for the container's cgroup (every process of it).
- **api**: the stack's Airflow API server (the ``/mlops`` plugin inside it); honest load is an
  authenticated ``POST /mlops/monitoring/history`` of the served model. Hostile, to
  ``POST /mlops/monitoring``: a body over the 2 MB limit sent chunked, a ``NaN`` metric, a deeply nested
  value, a 1 MB model name, an unknown field, a 1 MB object of distinct keys. Memory: the resident set of
  the API server's processes.

Rounds alternate: honest load alone (``wrk``), then the same load with the hostile cases sent beside it,
one a second, in turn. Printed for each target: memory at the start, after each round and at the end;
the honest requests' p99 with and without the hostile ones (target: within 1.5x); each hostile case's
statuses and slowest time, the server's own (its ``Server-Timing`` header; target: within 100 ms) and the
client's; whether the server's processes are the ones it started with. Every hostile request must get a
4xx within the server time, no honest one may fail, and no process of the server may come or go (a
restarted worker).

    PYTHONPATH=plugins:include .venv/bin/python bench/soak_bench.py                  # 5 rounds of 30 s
    PYTHONPATH=plugins:include .venv/bin/python bench/soak_bench.py --rounds 1 --duration 5   # smoke size

With ``--reuse-services``, the running stack its ``ASGARD_*`` environment describes (the suite's smoke run).
"""

from __future__ import annotations

import argparse
import http.client
import json
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "plugins"), str(REPO / "include"), str(REPO / "bench")]

from common import embedded_services, exit_code  # noqa: E402
from serving_bench import container, invocations_body, wrk  # noqa: E402

SERVING_LIMIT = 2_000_000  # the container's body limit for this run: its chunked case sends just over it


class Hostile(NamedTuple):
    name: str
    body: bytes
    chunked: bool = False


class Target(NamedTuple):
    """What is soaked: the honest request (``path``, ``body``, ``headers``), the hostile cases sent to
    ``hostile_path``, and the memory of the server's processes."""

    name: str
    url: str
    path: str
    body: str
    headers: dict[str, str]
    hostile_path: str
    hostile: list[Hostile]
    memory_mib: Callable[[], float]
    processes: Callable[[], frozenset[int]]  # the server's processes' ids: a restarted worker changes them


class Answer(NamedTuple):
    """A hostile request's answer: its status (0: the server closed the connection on a body it would
    not read), the client's seconds, and the server's own milliseconds (its Server-Timing header)."""

    status: int
    seconds: float
    server_ms: float | None


def nested(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


def serving_cases() -> list[Hostile]:
    n2 = json.dumps({"dataframe_records": [{f"k{i}": 0} for i in range(60_000)]}).encode()
    return [
        Hostile("n² records, 1 MB", n2[:1_000_000].rsplit(b"},", 1)[0] + b"}]}"),
        Hostile("NaN literal", b'{"dataframe_split": {"columns": ["total_purchases"], "data": [[NaN]]}}'),
        Hostile("deep nesting", b'{"inputs": {"total_purchases": ' + nested(100_000) + b"}}"),
        Hostile("1 MB string", json.dumps({"inputs": {"total_purchases": ["x" * 1_000_000]}}).encode()),
        Hostile("unknown column", b'{"inputs": {"no_such_feature": [1]}}'),
        Hostile("over the limit, chunked", b"[" + b"1," * (SERVING_LIMIT // 2 + 1) + b"1]", chunked=True),
    ]


def api_cases() -> list[Hostile]:
    from asgard.api.security import MAX_BODY_BYTES  # the /mlops body limit
    from sample_data.models import SEED_MONITORING_REQUEST

    def record(**changes) -> bytes:
        return json.dumps({**SEED_MONITORING_REQUEST, "model_name": "soak_bench", **changes}).encode()

    return [
        Hostile("NaN metric", record().replace(b"0.15", b"NaN", 1)),
        Hostile("deep nesting", record(current_data={"mean": 0.4}).replace(b"0.4", nested(100_000), 1)),
        Hostile("1 MB model name", record(model_name="x" * 1_000_000)),
        Hostile("unknown field", record(no_such_field=1)),
        Hostile("1 MB of distinct keys", record(metrics={f"k{i}": 0.5 for i in range(60_000)})),
        Hostile("over the limit, chunked", b"[" + b"1," * (MAX_BODY_BYTES // 2 + 1) + b"1]", chunked=True),
    ]


def send(target: Target, case: Hostile) -> Answer:
    """POST a hostile ``case`` (``chunked``: without a length, in 64 KiB chunks)."""
    host, port = target.url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=60)
    headers = {**target.headers, "Content-Type": "application/json"}
    started = time.perf_counter()
    try:
        if case.chunked:
            chunks = (case.body[i : i + 65_536] for i in range(0, len(case.body), 65_536))
            connection.request("POST", target.hostile_path, body=chunks, encode_chunked=True, headers=headers)
        else:
            connection.request("POST", target.hostile_path, body=case.body, headers=headers)
        response = connection.getresponse()
        status, timing = response.status, response.getheader("server-timing") or ""
    except (ConnectionError, http.client.HTTPException):
        status, timing = 0, ""  # the server closed the connection on a body it would not read: refused
    finally:
        connection.close()
    server_ms = float(timing.split("dur=")[1].split(",")[0]) if "dur=" in timing else None
    return Answer(status, time.perf_counter() - started, server_ms)


def hostile_traffic(target: Target, stop: threading.Event, seen: dict[str, list[Answer]]) -> None:
    turn = 0
    while not stop.is_set():
        case = target.hostile[turn % len(target.hostile)]
        answer = send(target, case)
        seen.setdefault(case.name, []).append(answer)
        turn += 1
        stop.wait(max(0.0, 1.0 - answer.seconds))


def soak(target: Target, args: argparse.Namespace) -> list[str]:
    """Alternate honest-only and mixed rounds on ``target``; print its figures; what failed."""

    unanswered = []

    def honest(duration: int) -> float:
        # Every honest request counts, however slow: a wide timeout keeps a stalled one in the p99.
        run = wrk(f"{target.url}{target.path}", target.body, duration, args.connections, headers=target.headers,
                  timeout=60)  # fmt: skip
        unanswered.append(run["timeouts"])
        if not run["requests"]:
            raise SystemExit(f"{target.name}: no honest request answered in {duration} s:\n{run['out']}")
        return run["p99_ms"]

    first = httpx.post(f"{target.url}{target.path}", content=target.body, timeout=120,
                       headers={**target.headers, "Content-Type": "application/json"})  # fmt: skip
    first.raise_for_status()  # the first answer (imports, connections) comes before any load is measured
    honest(5)  # warm
    start_mib, processes = target.memory_mib(), target.processes()
    quiet, mixed, seen, memory = [], [], {}, []
    for _ in range(args.rounds):
        quiet.append(honest(args.duration))
        stop = threading.Event()
        sender = threading.Thread(target=hostile_traffic, args=(target, stop, seen), daemon=True)
        sender.start()
        try:
            mixed.append(honest(args.duration))
        finally:
            stop.set()
            sender.join(timeout=120)
        memory.append(target.memory_mib())
    end_mib = target.memory_mib()
    alone, beside = statistics.median(quiet), statistics.median(mixed)
    ratio = beside / alone
    # Flat means the later rounds hold what the first one grew to (allocator arenas, buffers warm up once).
    print(f"== {target.name}")
    print(f"memory (its processes' own, no page cache): {start_mib:.1f} MiB at the start, "
          f"{end_mib:.1f} MiB at the end; after each round: {', '.join(f'{m:.1f}' for m in memory)} MiB")  # fmt: skip
    print(
        f"honest p99 (median of {args.rounds} rounds of {args.duration} s): {alone:.2f} ms alone, "
        f"{beside:.2f} ms with a hostile request a second: ratio {ratio:.2f} (target <= {args.max_p99_ratio:g})"
    )
    failures = []
    for name, answers in seen.items():
        statuses = sorted({answer.status for answer in answers})
        client_ms = max(answer.seconds for answer in answers) * 1000
        timed = [answer.server_ms for answer in answers if answer.server_ms is not None]
        server_ms = max(timed, default=float("nan"))
        print(f"  {name}: {len(answers)} sent, statuses {statuses}, slowest {server_ms:.1f} ms server time "
              f"({len(timed)} timed), {client_ms:.1f} ms client side")  # fmt: skip
        if any(not (400 <= status < 500 or status == 0) for status in statuses):
            failures.append(f"{target.name}, {name}: answered {statuses}, not a 4xx")
        if server_ms > args.max_server_ms:
            failures.append(f"{target.name}, {name}: {server_ms:.1f} ms of server time > {args.max_server_ms:g}")
    restarted = processes ^ target.processes()
    print(f"processes: {len(processes)} at the start, {'the same' if not restarted else 'changed'} at the end")
    if restarted:
        failures.append(f"{target.name}: processes came or went during the soak (a restart): {sorted(restarted)}")
    if sum(unanswered):
        failures.append(f"{target.name}: {sum(unanswered)} honest request(s) unanswered after 60 s")
    if ratio > args.max_p99_ratio:
        failures.append(f"{target.name}: honest p99 ratio {ratio:.2f} > {args.max_p99_ratio:g}")
    return failures


def api_server_processes(manager) -> tuple[Callable[[], float], Callable[[], frozenset[int]]]:
    """The resident set of the Airflow API server's processes (its uvicorn and their children), and their ids."""
    import psutil

    (status,) = [status for status in manager.status() if status.name == "airflow"]
    tree = psutil.Process(status.pid).children(recursive=True)
    # Its title once up (setproctitle) is "airflow api_server -- host:...", its command "airflow api-server".
    servers = [process for process in tree if {"api_server", "api-server"} & set(" ".join(process.cmdline()).split())]
    if not servers:
        raise SystemExit(f"no API server process under the airflow service (pid {status.pid})")
    server = servers[0]  # the outermost: the tree lists parents before their children

    def memory_mib() -> float:
        processes = [server, *server.children(recursive=True)]
        return sum(process.memory_info().rss for process in processes) / 2**20

    def processes() -> frozenset[int]:
        return frozenset(process.pid for process in (server, *server.children(recursive=True)))

    return memory_mib, processes


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--duration", type=int, default=30, help="seconds of each load run")
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--customers", type=int, default=5_000, help="training rows of the sample model")
    parser.add_argument(
        "--max-p99-ratio", type=float, default=1.5, help="the honest p99's ratio, mixed / alone, that fails the run"
    )
    parser.add_argument(
        "--max-server-ms", type=float, default=100, help="a hostile request's server time that fails the run"
    )
    parser.add_argument(
        "--reuse-services", action="store_true", help="the running stack ASGARD_* describes (else a fresh one)"
    )
    args = parser.parse_args()

    import docker

    from asgard.hooks.airflow_api import fetch_token
    from asgard.hooks.docker import build_image
    from asgard.hooks.mlflow import MlflowHook
    from asgard.registry.versions import resolve_model_version
    from asgard.serving import image as serving_image
    from sample_data.models import register_sample_model

    failures: list[str] = []
    services = ["mlflow", "docker", "airflow"]
    with (
        embedded_services(services, reuse=args.reuse_services, prefix="asgard-soak-bench-") as (settings, manager),
        tempfile.TemporaryDirectory(prefix="asgard-soak-bench-") as scratch,
    ):
        client = docker.APIClient(base_url=settings.docker_url, version="auto")
        hook = MlflowHook()
        version = register_sample_model(settings.mlflow_url, "soak_lightgbm", framework="lightgbm",
                                        customers=args.customers)  # fmt: skip
        ref = resolve_model_version(hook, "soak_lightgbm", version)
        context = serving_image.render_context(hook, ref, Path(scratch) / "context")
        image = f"asgard-bench/soak:{serving_image.image_tag(ref.name, ref.version)}"
        build_image(client, context.folder, image, labels=context.labels, progress=lambda _: None,
                    build_args=serving_image.build_arguments(context, settings.serving_base_image))  # fmt: skip
        environment = {"ASGARD_SERVING_MAX_BODY_BYTES": str(SERVING_LIMIT)}
        with container(client, image, 1, environment=environment) as served:
            serving = Target("serving container (1-row /invocations)", served.url, "/invocations",
                             invocations_body(1), {}, "/invocations", serving_cases(), served.memory_mib,
                             served.processes)  # fmt: skip
            failures += soak(serving, args)
        token = fetch_token(settings.airflow_url, *manager.admin_credentials())
        # A team reading its own registered model's history (the served model's).
        history = json.dumps({"model_name": "soak_lightgbm", "limit": 10})
        api = Target("Airflow API server (POST /mlops/monitoring/history)", settings.airflow_url,
                     "/mlops/monitoring/history", history, {"Authorization": f"Bearer {token}"},
                     "/mlops/monitoring", api_cases(), *api_server_processes(manager))  # fmt: skip
        failures += soak(api, args)
    return exit_code(failures)


if __name__ == "__main__":
    sys.exit(main())
