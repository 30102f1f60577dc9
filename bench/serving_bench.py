"""Benchmark: the serving image vs ``mlflow models serve``, and vs the limit of its own HTTP stack.

For a RandomForest (100 trees, depth 10) and a LightGBM model (100 trees), both trained on the
seed's six features: build the platform's serving image (the real builder, on a private Docker
engine) and drive it with ``wrk`` (the same MLflow ``/invocations`` body, 1 row and 100 rows), with
its prediction log on, side by side with:

- ``mlflow models serve`` with the same workers (target: >= 10x the requests/s, <= 0.2x the p99);
- a bare endpoint (``bench/bare_endpoint.py``: FastAPI parsing the same body, answering a constant,
  no model) run in the same image with the same server settings, the two runs alternating, the
  better of two each: 1-row requests >= 0.8x its requests/s and p99 <= 1.5x its p99;
- the model alone: ONNX Runtime on the same 100 rows in this process, with the image's session
  options (100-row requests >= 0.8x the requests/s it allows); also printed against the bare
  endpoint's 100-row cost plus the model's, the limit of stack and model together, and beside the
  seconds the model took inside the server under the same load (its ``/metrics``): its share of the
  worker's time, the rest being the work around it;
- itself with two workers (target >= 1.7x one worker), beside the bare endpoint's own scaling, which
  says what the machine allows when the load generator shares its cores, and the image's CPU seconds
  per request (read from the engine) with two workers and with one worker reading as many connections
  as each of them, which ``wrk``'s share of the cores does not cap.

- itself as the Docker deploy target runs it (``asgard.deploy.docker_target.create_serving_container``:
  a network namespace and bridge of its own, its port published on 127.0.0.1, non-root, read-only,
  capped) against the same image on the host's network, 1 row, the two alternating (target >= 0.9x).

Before timing, the image's labels on 100 rows must equal ``mlflow models serve``'s and the native
model's, and its probabilities be within 1e-6 of the native model's. Then the image size and
container start -> /health ok time (target <= 3 s).

    python bench/serving_bench.py                               # 10 s per load run (not part of CI)
    python bench/serving_bench.py --duration 1 --customers 3000 --models lightgbm  # smoke size (CI)
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "plugins"), str(REPO / "include")]

from common import embedded_services, exit_code, free_port  # noqa: E402

MODELS = {"random_forest": "sklearn", "lightgbm": "lightgbm"}


def wait_healthy(url: str, timeout: float = 120.0) -> float:
    import httpx

    started = time.perf_counter()
    while time.perf_counter() - started < timeout:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=1.0).status_code == 200:
                return time.perf_counter() - started
        time.sleep(0.02)
    raise RuntimeError(f"{url} not healthy after {timeout:.0f}s")


def wait_answering(url: str, timeout: float = 60.0) -> None:
    import httpx

    started = time.perf_counter()
    while time.perf_counter() - started < timeout:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.post(url, content=b"{}", timeout=1.0).status_code == 200:
                return
        time.sleep(0.05)
    raise RuntimeError(f"{url} not answering after {timeout:.0f}s")


def model_alone(model_file: Path, info: dict, frame, seconds: float = 2.0) -> tuple[float, float]:
    """Seconds per call of ONNX Runtime on ``frame``'s rows, with the serving image's session options:
    wall time and this thread's CPU time (the best of five rounds each)."""
    import onnxruntime

    from asgard.serving.onnx_export import feeds

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    session = onnxruntime.InferenceSession(str(model_file), options, providers=["CPUExecutionProvider"])
    inputs = feeds(frame, info["signature"]["inputs"], info["onnx"].get("numeric_input"))
    outputs = [output.name for output in session.get_outputs()][-1:]  # probabilities, or a regressor's values
    for _ in range(50):
        session.run(outputs, inputs)
    rounds, cpu = [], []
    for _ in range(5):
        calls, started, cpu_started = 0, time.perf_counter(), time.thread_time()
        while time.perf_counter() - started < seconds / 5:
            session.run(outputs, inputs)
            calls += 1
        rounds.append((time.perf_counter() - started) / calls)
        cpu.append((time.thread_time() - cpu_started) / calls)  # one intra-op thread: the calling one
    return min(rounds), min(cpu)


def sample_rows(rows: int):
    from sample_data.models import SEED_FEATURES, training_frame

    frame, _ = training_frame(customers=max(rows, 200))
    return frame.dropna().head(rows)[SEED_FEATURES]


def invocations_body(rows: int) -> str:
    from sample_data.models import SEED_FEATURES, training_frame

    frame, _ = training_frame(customers=max(rows, 200))
    sample = frame.dropna().head(rows)
    return json.dumps({"dataframe_split": {"columns": SEED_FEATURES, "data": sample[SEED_FEATURES].values.tolist()}})


def wrk(
    url: str,
    body: str,
    duration: int,
    connections: int,
    *,
    headers: dict[str, str] | None = None,
    timeout: int = 2,
) -> dict[str, Any]:
    """POST ``body`` (JSON) to ``url`` with ``headers`` besides its content type for ``duration`` s: the figures.

    A request unanswered after ``timeout`` s (wrk's default: 2) is left out of the latencies, and counted."""
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        # Lua long strings with level-2 brackets: a JSON body or a header may contain "]]".
        lines = ['wrk.method = "POST"', 'wrk.headers["Content-Type"] = "application/json"']
        lines += [f"wrk.headers[ [==[{name}]==] ] = [==[{value}]==]" for name, value in (headers or {}).items()]
        script.write("\n".join([*lines, f"wrk.body = [==[{body}]==]", ""]))
    try:
        result = subprocess.run(
            [
                "wrk",
                "-t2",
                f"-c{connections}",
                f"-d{duration}s",
                f"--timeout={timeout}s",
                "--latency",
                "-s",
                script.name,
                url,
            ],
            capture_output=True,
            text=True,
            check=True,
            timeout=duration + timeout + 60,
        )
    finally:
        os.unlink(script.name)
    out = result.stdout
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if errors:
        raise RuntimeError(f"{url} answered {errors.group(1)} errors under load:\n{out}")
    timeouts = re.search(r"Socket errors: .*timeout (\d+)", out)
    return {
        # wrk leaves a request unanswered after ``timeout`` s out of its latency figures: counted here.
        "timeouts": int(timeouts.group(1)) if timeouts else 0,
        "out": out,
        "requests": int(re.search(r"(\d+) requests in", out).group(1)),
        "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
        "p50_ms": _ms(re.search(r"\s50%\s+([\d.]+\w+)", out).group(1)),
        "p99_ms": _ms(re.search(r"\s99%\s+([\d.]+\w+)", out).group(1)),
    }


def _ms(value: str) -> float:
    number, unit = re.match(r"([\d.]+)(\w+)", value).groups()
    return float(number) * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}[unit]


@contextlib.contextmanager
def mlflow_serve(model_uri: str, tracking_uri: str, workers: int):
    port = free_port()
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": tracking_uri,
        "MLFLOW_REGISTRY_URI": tracking_uri,
        "MLFLOW_ALLOW_PICKLE_DESERIALIZATION": "true",
        # mlflow models serve execs `uvicorn` from PATH.
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    log = tempfile.NamedTemporaryFile("w+b", prefix="mlflow-serve-", suffix=".log", delete=False)  # noqa: SIM115
    process = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "mlflow"),
            "models",
            "serve",
            "-m",
            model_uri,
            "--env-manager",
            "local",
            "-w",
            str(workers),
            "-h",
            "127.0.0.1",
            "-p",
            str(port),
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        try:
            wait_healthy(f"http://127.0.0.1:{port}/ping")
        except RuntimeError as error:
            raise RuntimeError(f"{error}; mlflow models serve said:\n{Path(log.name).read_text()[-3000:]}") from None
        yield f"http://127.0.0.1:{port}"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)
        os.unlink(log.name)


class Served(NamedTuple):
    """A container serving on the loopback: its URL, its start -> healthy seconds, its CPU seconds so far."""

    url: str
    start_seconds: float
    cpu_seconds: Callable[[], float]  # every process of the container (its cgroup), as the engine counts it
    memory_mib: Callable[[], float] = lambda: float("nan")  # the same cgroup's memory in use
    processes: Callable[[], frozenset[int]] = frozenset  # its processes' ids: a restarted worker changes them


@contextlib.contextmanager
def container(
    client,
    image: str,
    workers: int,
    *,
    bare: bool = False,
    prediction_log: bool = True,
    environment: dict[str, str] | None = None,
    binds: list[str] | None = None,
):
    """The image serving its model (``bare``: serving the bare endpoint instead) on a free loopback port;
    ``environment`` and ``binds`` add to what it gets."""
    port = free_port()
    environment = {**(environment or {}), "ASGARD_SERVING_PORT": str(port), "ASGARD_SERVING_WORKERS": str(workers)}
    if prediction_log and not bare:
        environment["ASGARD_PREDICTION_LOG"] = "/tmp/predictions"  # written as in production, every 5 s
    options: dict = {}
    binds = list(binds or [])
    if bare:
        environment["PYTHONPATH"] = "/opt/asgard/app:/opt/bench"
        options = {"entrypoint": ["python3", "/opt/bench/bare_endpoint.py"]}
        binds.append(f"{REPO / 'bench'}:/opt/bench:ro")
    created = client.create_container(
        image,
        environment=environment,
        host_config=client.create_host_config(network_mode="host", binds=binds),
        **options,
    )
    started = time.perf_counter()
    client.start(created)
    try:
        if bare:
            wait_answering(f"http://127.0.0.1:{port}/invocations")
        else:
            wait_healthy(f"http://127.0.0.1:{port}/health")
        ready = time.perf_counter() - started

        def cpu_seconds() -> float:
            stats = client.stats(created, stream=False, one_shot=True)
            return stats["cpu_stats"]["cpu_usage"]["total_usage"] / 1e9

        def memory_mib() -> float:
            # Its processes' own memory (anon: cgroup v2, rss: v1), not the page cache its log files fill.
            memory = client.stats(created, stream=False, one_shot=True)["memory_stats"]
            counted = memory.get("stats", {})
            return counted.get("anon", counted.get("rss", memory["usage"])) / 2**20

        def processes() -> frozenset[int]:
            # The server's own processes: not the image's HEALTHCHECK, a short python3 the engine execs every
            # 10 s, which `docker top` lists while it runs (a soak once counted one as a restart).
            top = client.top(created)
            titles = top["Titles"]
            pid, command = titles.index("PID"), titles.index("CMD" if "CMD" in titles else "COMMAND")
            return frozenset(int(row[pid]) for row in top["Processes"] if "urllib.request.urlopen" not in row[command])

        yield Served(f"http://127.0.0.1:{port}", ready, cpu_seconds, memory_mib, processes)
    finally:
        client.remove_container(created, force=True)


@contextlib.contextmanager
def isolated_container(client, image: str, workers: int, settings):
    """The image as the Docker deploy target holds a model's container (its own network, limits)."""
    import uuid

    from asgard.deploy.docker_target import create_serving_container, remove_serving_container, serving_upstream

    name = f"asgard-bench-isolated-{uuid.uuid4().hex[:8]}"
    environment = {"ASGARD_SERVING_WORKERS": str(workers), "ASGARD_PREDICTION_LOG": "/tmp/predictions"}
    created, port = create_serving_container(client, name, image, environment, {}, {}, settings=settings, restart=False)
    started = time.perf_counter()
    client.start(created)
    try:
        # As the router reaches it: on its own bridge (the published port is the users' way in).
        url = serving_upstream(client.inspect_container(created)) or f"http://127.0.0.1:{port}"
        wait_healthy(f"{url}/health")
        ready = time.perf_counter() - started

        def cpu_seconds() -> float:
            stats = client.stats(created, stream=False, one_shot=True)
            return stats["cpu_stats"]["cpu_usage"]["total_usage"] / 1e9

        yield Served(url, ready, cpu_seconds)
    finally:
        remove_serving_container(client, name)


def model_time(url: str) -> tuple[float, float]:
    """The image's ``asgard_prediction_model_seconds`` so far: (seconds, predictions)."""
    import httpx

    text = httpx.get(f"{url}/metrics", timeout=10).text
    value = {line.split()[0]: float(line.split()[1]) for line in text.splitlines() if line.startswith("asgard_")}
    return value["asgard_prediction_model_seconds_sum"], value["asgard_prediction_model_seconds_count"]


def loaded(served: Served, body: str, duration: int, connections: int) -> dict:
    """``wrk``'s figures for ``served`` under this load, and the CPU seconds its container took per request,
    all its processes together (``cpu_s``)."""
    before = served.cpu_seconds()
    run = wrk(f"{served.url}/invocations", body, duration, connections)
    run["cpu_s"] = (served.cpu_seconds() - before) / max(run["requests"], 1)
    return run


def side_by_side(bare: Served, ours: Served, body: str, args: argparse.Namespace) -> tuple[dict, dict]:
    """The bare endpoint and the image, alternating (bare, image, bare, image), each run half the
    duration, the better run of each: a slow spell of a noisy machine then lands on both, not on one.
    Each run says the CPU seconds its container took per request, all its workers together (``cpu_s``);
    the image's, also the seconds its model took per request, inside the server (``model_s``)."""
    runs: dict[str, list[dict]] = {"bare": [], "ours": []}
    for _ in range(2):
        for name, served in (("bare", bare), ("ours", ours)):
            model_before = model_time(served.url) if name == "ours" else None
            run = loaded(served, body, max(1, args.duration // 2), args.connections)
            runs[name].append(run)
            if model_before is not None:
                seconds, predictions = (
                    now - then for now, then in zip(model_time(served.url), model_before, strict=True)
                )
                run["model_s"] = seconds / max(predictions, 1)
    best = {name: max(results, key=lambda result: result["rps"]) for name, results in runs.items()}
    return best["bare"], best["ours"]


def post(url: str, body: str) -> dict:
    import httpx

    response = httpx.post(url, content=body, headers={"content-type": "application/json"}, timeout=30)
    response.raise_for_status()
    return response.json()


def check_predictions(native, url: str, rows) -> dict:
    """The image's ``/predict`` answer on ``rows`` against the native model's: labels, probabilities."""
    import numpy as np

    body = json.dumps({"inputs": rows.to_dict(orient="list"), "return_probabilities": True})
    answer = post(f"{url}/predict", body)
    expected = np.asarray(native.predict_proba(rows))
    return {
        "labels": answer["predictions"],
        "native_labels": answer["predictions"] == native.predict(rows).tolist(),
        "difference": float(np.max(np.abs(np.asarray(answer["probabilities"]) - expected))),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=int, default=10, help="seconds per wrk run")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--customers", type=int, default=20_000, help="training rows of the sample models")
    parser.add_argument("--starts", type=int, default=5, help="container starts timed for start -> healthy")
    parser.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS), help="which sample models")
    parser.add_argument(
        "--reuse-services", action="store_true", help="the running stack ASGARD_* describes (else a fresh one)"
    )
    args = parser.parse_args()

    import docker

    from asgard.hooks.docker import build_image
    from asgard.registry.versions import resolve_model_version
    from asgard.serving import image as serving_image
    from sample_data.models import register_sample_model

    bodies = {rows: invocations_body(rows) for rows in (1, 100)}
    failures = []
    services = embedded_services(
        ["mlflow", "docker"], reuse=args.reuse_services, prefix="asgard-serving-bench-", quiet=False
    )
    with services as (settings, _), tempfile.TemporaryDirectory(prefix="asgard-serving-bench-") as scratch:
        home = Path(scratch)
        client = docker.APIClient(base_url=settings.docker_url, version="auto")
        from asgard.hooks.mlflow import MlflowHook

        hook = MlflowHook()
        for label in args.models:
            framework, name = MODELS[label], f"bench_{label}"
            version = register_sample_model(settings.mlflow_url, name, framework=framework, customers=args.customers)
            ref = resolve_model_version(hook, name, version)
            started = time.perf_counter()
            context = serving_image.render_context(hook, ref, home / "contexts" / name)
            image = f"asgard-bench/{name}:{serving_image.image_tag(ref.name, ref.version)}"
            build_image(
                client,
                context.folder,
                image,
                build_args=serving_image.build_arguments(context, settings.serving_base_image),
                labels=context.labels,
                progress=lambda _: None,
            )
            size_mb = client.inspect_image(image)["Size"] / 1e6
            print(
                f"\n== {label} ({framework}), {args.customers} training rows: image built in "
                f"{time.perf_counter() - started:.1f}s, {size_mb:.0f} MB, serving {context.info['flavor']}: "
                f"{context.info['flavor_reason']}",
                flush=True,
            )

            native = hook.load_model(f"models:/{name}/{version}")
            with (
                container(client, image, args.workers) as ours,
                container(client, image, args.workers, bare=True) as bare,
                mlflow_serve(f"models:/{name}/{version}", settings.mlflow_url, args.workers) as theirs,
            ):
                checked = check_predictions(native, ours.url, sample_rows(100))
                their_labels = post(f"{theirs}/invocations", bodies[100])["predictions"]
                same = [int(a) for a in checked["labels"]] == [int(b) for b in their_labels]
                print(f"  100-row request: labels identical to mlflow models serve: {same}", flush=True)
                print(
                    f"  100-row /predict: labels identical to the native model: {checked['native_labels']}, "
                    f"largest probability difference {checked['difference']:.1e} (target <= 1e-6)",
                    flush=True,
                )
                if not same:
                    failures.append(f"{label}: labels differ from mlflow models serve")
                if not checked["native_labels"] or checked["difference"] > 1e-6:
                    failures.append(f"{label}: predictions differ from the native model")
                one_worker = {}
                for rows, body in bodies.items():
                    baseline = wrk(f"{theirs}/invocations", body, args.duration, args.connections)
                    yardstick, measured = side_by_side(bare, ours, body, args)
                    # The load two workers will share, on one: each of them reads half the connections.
                    half = loaded(ours, body, max(1, args.duration // 2), args.connections // 2)
                    one_worker[rows] = (measured, yardstick, half)
                    print(
                        f"  {rows:>3} row(s), {args.workers} worker(s): "
                        f"mlflow models serve {baseline['rps']:.0f} req/s "
                        f"p50 {baseline['p50_ms']:.1f} ms p99 {baseline['p99_ms']:.1f} ms | asgard "
                        f"{measured['rps']:.0f} req/s p50 {measured['p50_ms']:.2f} ms p99 {measured['p99_ms']:.2f} ms"
                        f" | ratio req/s {measured['rps'] / baseline['rps']:.1f}x, "
                        f"p99 {measured['p99_ms'] / baseline['p99_ms']:.3f}x",
                        flush=True,
                    )
                    print(
                        f"      vs the bare endpoint (same image, no model): {yardstick['rps']:.0f} req/s "
                        f"p99 {yardstick['p99_ms']:.2f} ms | bare ratio req/s {measured['rps'] / yardstick['rps']:.2f} "
                        f"(target >= 0.8 at 1 row), p99 {measured['p99_ms'] / yardstick['p99_ms']:.2f} "
                        f"(target <= 1.5 at 1 row) | the model inside the server "
                        f"{measured['model_s'] * 1e3:.3f} ms per request, "
                        f"{measured['rps'] * measured['model_s'] / args.workers:.2f} of the worker's time",
                        flush=True,
                    )
                    # CPU time, not wall time: wrk on the same cores does not blur it. At one row the model
                    # costs next to nothing, so the image is held against the bare endpoint alone.
                    print(
                        f"      CPU per request (the container's cgroup): asgard {measured['cpu_s'] * 1e6:.1f} us, "
                        f"the bare endpoint {yardstick['cpu_s'] * 1e6:.1f} us | CPU ratio over the bare endpoint "
                        f"{measured['cpu_s'] / yardstick['cpu_s']:.2f}{' (goal <= 1.1)' if rows == 1 else ''}",
                        flush=True,
                    )
            # The deploy target's own network (a bridge of its own, the port published through the engine's
            # proxy) against the host's, same image and load, alternating.
            with (
                container(client, image, args.workers) as host,
                isolated_container(client, image, args.workers, settings) as isolated,
            ):
                on_host, held = side_by_side(host, isolated, bodies[1], args)
                ratio = held["rps"] / on_host["rps"]
                print(
                    f"    1 row, as the deploy target runs it (own network and bridge, limits; the router's way in): "
                    f"{held['rps']:.0f} req/s p99 {held['p99_ms']:.2f} ms | on the host's network "
                    f"{on_host['rps']:.0f} req/s p99 {on_host['p99_ms']:.2f} ms | network ratio {ratio:.2f} "
                    f"(target >= 0.9)",
                    flush=True,
                )
            if context.info["flavor"] == "onnx":
                model_file = context.folder / "model" / "model.onnx"
                seconds, cpu_seconds = model_alone(model_file, context.info, sample_rows(100))
                measured, yardstick, _ = one_worker[100]
                with_stack = 1 / (1 / yardstick["rps"] + seconds)
                print(
                    f"  100 rows, the model alone (ONNX Runtime, same rows, this process): {seconds * 1e3:.3f} ms "
                    f"= {1 / seconds:.0f} req/s | model ratio {measured['rps'] * seconds:.2f} (target >= 0.8) | "
                    f"bare endpoint + model {with_stack:.0f} req/s, ratio {measured['rps'] / with_stack:.2f}",
                    flush=True,
                )
                floor = yardstick["cpu_s"] + cpu_seconds
                print(
                    f"      100 rows, CPU per request: asgard {measured['cpu_s'] * 1e6:.1f} us, the bare endpoint's "
                    f"+ the model alone's {floor * 1e6:.1f} us | CPU ratio {measured['cpu_s'] / floor:.2f} "
                    f"(goal <= 1.1)",
                    flush=True,
                )
                # A server on this stack that added nothing to the bare endpoint but the model would reach
                # this model ratio: the bound the stack's own cost per request sets, whatever the server does.
                print(
                    f"      the model ratio of the bare endpoint + model: {with_stack * seconds:.2f} (the most one "
                    f"worker on this stack reaches: its parsing and the model run one after the other)",
                    flush=True,
                )
                # The same model inside the server under load (its /metrics): what share of the worker's
                # time the model had, the rest being the work around it.
                inside = measured["model_s"]
                print(
                    f"      the model inside the server, under this load: {inside * 1e3:.3f} ms per request "
                    f"({inside / seconds:.2f}x the model alone) | its share of the worker's time "
                    f"{measured['rps'] * inside / args.workers:.2f}",
                    flush=True,
                )
            with (
                container(client, image, 2 * args.workers) as ours,
                container(client, image, 2 * args.workers, bare=True) as bare,
            ):
                for rows, body in bodies.items():
                    yardstick, measured = side_by_side(bare, ours, body, args)
                    scaling = measured["rps"] / one_worker[rows][0]["rps"]
                    print(
                        f"  {rows:>3} row(s), {2 * args.workers} workers: asgard {measured['rps']:.0f} req/s "
                        f"p99 {measured['p99_ms']:.2f} ms | workers ratio {scaling:.2f} "
                        f"(target >= 1.7) | bare endpoint {yardstick['rps']:.0f} req/s, its own ratio "
                        f"{yardstick['rps'] / one_worker[rows][1]['rps']:.2f} (what {os.cpu_count()} cores shared "
                        f"with wrk allow)",
                        flush=True,
                    )
                    # The bare endpoint's workers do the least a server can per request: when the image's
                    # one worker is already faster than it, their rate is about the most the machine and
                    # wrk (on the same cores) let any two workers reach, so this ratio bounds the one above.
                    print(
                        f"      the bare endpoint's {2 * args.workers} workers over asgard's {args.workers} worker(s): "
                        f"{yardstick['rps'] / one_worker[rows][0]['rps']:.2f} (the most two workers can show "
                        f"here when asgard's one worker outruns the bare endpoint's) | asgard at "
                        f"{measured['rps'] / yardstick['rps']:.2f} of the bare endpoint's rate",
                        flush=True,
                    )
                    # CPU per request is not capped by what wrk leaves the server, as req/s is (though sharing
                    # cores with wrk still costs some: switches, cold caches). A worker's cost per request
                    # falls with the requests it reads at once, so two workers are held against one worker
                    # reading as many connections as each of them does: the same cost means the workers share
                    # nothing that costs, and would scale on cores of their own.
                    alone, bare_alone, half = (result["cpu_s"] for result in one_worker[rows])
                    connections = args.connections
                    print(
                        f"      the image's CPU per request (all its processes): {args.workers} worker(s) at "
                        f"{connections} connections {alone * 1e6:.1f} us, at {connections // 2} {half * 1e6:.1f} us; "
                        f"{2 * args.workers} workers at {connections} ({connections // 2} each) "
                        f"{measured['cpu_s'] * 1e6:.1f} us | CPU ratio {measured['cpu_s'] / half:.2f} against "
                        f"one worker at {connections // 2} (1.00: the workers add no cost per request) | the bare "
                        f"endpoint's CPU per request, {2 * args.workers} workers over 1: "
                        f"{yardstick['cpu_s'] / bare_alone:.2f}",
                        flush=True,
                    )

            healthy = []
            for _ in range(args.starts):
                with container(client, image, args.workers) as served:
                    healthy.append(served.start_seconds)
            print(
                f"  container start -> /health ok: median {statistics.median(healthy):.2f}s "
                f"(min {min(healthy):.2f}s, max {max(healthy):.2f}s, {args.starts} starts); image {size_mb:.0f} MB",
                flush=True,
            )
    return exit_code(failures)


if __name__ == "__main__":
    sys.exit(main())
