"""Soak: the serving container under steady honest load, with a hostile request mixed in every second.

One serving image of the sample LightGBM model (the real builder, on a private Docker engine), one
container. Rounds alternate: honest load alone (``wrk``, 1 row), then the same load with one hostile
request a second sent beside it (the n² records body at 1 MB, a body over the size limit sent chunked,
``NaN``, a deeply nested value, a 1 MB string, an unknown column). Printed: the container's memory at the
start and at the end (the engine's count for its cgroup: every process of it), the honest requests' p99
with and without the hostile ones (target: within 1.5x), and each hostile case's status and time. Every
hostile request must get a 4xx, and no honest one may fail.

    PYTHONPATH=plugins:include .venv/bin/python bench/soak_bench.py                  # 5 rounds of 30 s
    PYTHONPATH=plugins:include .venv/bin/python bench/soak_bench.py --rounds 1 --duration 5   # smoke size
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
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "plugins"), str(REPO / "include"), str(REPO / "bench")]

from common import embedded_services, exit_code  # noqa: E402
from serving_bench import container, invocations_body, wrk  # noqa: E402


def hostile_bodies() -> list[tuple[str, bytes]]:
    """The cases, each a request body the app must refuse with a 4xx, cheaply."""
    n2 = json.dumps({"dataframe_records": [{f"k{i}": 0} for i in range(60_000)]}).encode()
    nested = ("[" * 100_000 + "]" * 100_000).encode()
    return [
        ("n² records, 1 MB", n2[:1_000_000].rsplit(b"},", 1)[0] + b"}]}"),
        ("NaN literal", b'{"dataframe_split": {"columns": ["total_purchases"], "data": [[NaN]]}}'),
        ("deep nesting", b'{"inputs": {"total_purchases": ' + nested + b"}}"),
        ("1 MB string", json.dumps({"inputs": {"total_purchases": ["x" * 1_000_000]}}).encode()),
        ("unknown column", b'{"inputs": {"no_such_feature": [1]}}'),
    ]


def send(host: str, port: int, body: bytes, *, chunked: bool = False) -> tuple[int, float]:
    """POST ``body`` to /invocations (``chunked``: without a length, in 64 KiB chunks); status and seconds."""
    connection = http.client.HTTPConnection(host, port, timeout=60)
    started = time.perf_counter()
    try:
        if chunked:
            chunks = (body[i : i + 65_536] for i in range(0, len(body), 65_536))
            connection.request("POST", "/invocations", body=chunks, encode_chunked=True,
                               headers={"Content-Type": "application/json"})  # fmt: skip
        else:
            connection.request("POST", "/invocations", body=body, headers={"Content-Type": "application/json"})
        status = connection.getresponse().status
    except (ConnectionError, http.client.HTTPException):
        status = 0  # the server closed the connection on a body it would not read: counted as refused below
    finally:
        connection.close()
    return status, time.perf_counter() - started


def hostile_traffic(url: str, stop: threading.Event, seen: dict[str, list[tuple[int, float]]], limit: int) -> None:
    host, port = url.removeprefix("http://").split(":")
    cases = [*hostile_bodies(), ("over the limit, chunked", b"[" + b"1," * (limit // 2 + 1) + b"1]")]
    turn = 0
    while not stop.is_set():
        name, body = cases[turn % len(cases)]
        status, seconds = send(host, int(port), body, chunked=name.endswith("chunked"))
        seen.setdefault(name, []).append((status, seconds))
        turn += 1
        stop.wait(max(0.0, 1.0 - seconds))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--duration", type=int, default=30, help="seconds of each load run")
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--customers", type=int, default=5_000, help="training rows of the sample model")
    args = parser.parse_args()

    import docker

    from asgard.hooks.docker import build_image
    from asgard.hooks.mlflow import MlflowHook
    from asgard.registry.versions import resolve_model_version
    from asgard.serving import image as serving_image
    from sample_data.models import register_sample_model

    failures: list[str] = []
    limit = 2_000_000  # the container's body limit for this run: the chunked case sends just over it
    with (
        embedded_services(["mlflow", "docker"], reuse=False, prefix="asgard-soak-bench-", quiet=True) as (settings, _),
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
        honest = invocations_body(1)
        environment = {"ASGARD_SERVING_MAX_BODY_BYTES": str(limit)}
        with container(client, image, 1, environment=environment) as served:
            wrk(f"{served.url}/invocations", honest, 2, args.connections)  # warm
            start_mib = served.memory_mib()
            quiet, hostile, seen, memory = [], [], {}, []
            for _ in range(args.rounds):
                quiet.append(wrk(f"{served.url}/invocations", honest, args.duration, args.connections)["p99_ms"])
                stop = threading.Event()
                sender = threading.Thread(target=hostile_traffic, args=(served.url, stop, seen, limit), daemon=True)
                sender.start()
                try:
                    hostile.append(wrk(f"{served.url}/invocations", honest, args.duration, args.connections)["p99_ms"])
                finally:
                    stop.set()
                    sender.join(timeout=120)
                memory.append(served.memory_mib())
            end_mib = served.memory_mib()
    ratio = statistics.median(hostile) / statistics.median(quiet)
    # Flat means the later rounds hold what the first one grew to (allocator arenas, buffers warm up once).
    print(f"container memory (its processes' own, no page cache): {start_mib:.1f} MiB at the start, "
          f"{end_mib:.1f} MiB at the end; after each round: {', '.join(f'{m:.1f}' for m in memory)} MiB")  # fmt: skip
    alone, mixed = statistics.median(quiet), statistics.median(hostile)
    print(
        f"honest p99 (median of {args.rounds} rounds of {args.duration} s): {alone:.2f} ms alone, "
        f"{mixed:.2f} ms with a hostile request a second: ratio {ratio:.2f} (target <= 1.5)"
    )
    for name, results in seen.items():
        statuses = sorted({status for status, _ in results})
        worst = max(seconds for _, seconds in results) * 1000
        print(f"  {name}: {len(results)} sent, statuses {statuses}, slowest {worst:.1f} ms (client side)")
        if any(not (400 <= status < 500 or status == 0) for status in statuses):
            failures.append(f"{name}: answered {statuses}, not a 4xx")
    if ratio > 1.5:
        failures.append(f"honest p99 ratio {ratio:.2f} > 1.5")
    return exit_code(failures)


if __name__ == "__main__":
    sys.exit(main())
