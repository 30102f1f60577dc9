"""Benchmark: the serving image vs ``mlflow models serve`` for the same registered model.

For a RandomForest (100 trees, depth 10) and a LightGBM model (100 trees), both trained on the
seed's six features: build the platform's serving image (the real builder, on a private Docker
engine), start it and ``mlflow models serve`` with the same number of workers on loopback, and
drive both with the same ``wrk`` load (same MLflow ``/invocations`` body, 1 row and 100 rows).
Prints requests/s, p50 and p99, and the ratios (target: >= 10x the requests/s, <= 0.2x the p99).
Before timing, both servers answer the same 100-row request and the labels must match. Then the
image size and container start -> /health ok time (target <= 3 s).

    python bench/serving_bench.py                               # 10 s per load run (not part of CI)
    python bench/serving_bench.py --duration 2 --customers 3000  # smoke size
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
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "plugins"), str(REPO / "include")]

from common import embedded_services, free_port  # noqa: E402

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


def invocations_body(rows: int) -> str:
    from sample_data.models import SEED_FEATURES, training_frame

    frame, _ = training_frame(customers=max(rows, 200))
    sample = frame.dropna().head(rows)
    return json.dumps({"dataframe_split": {"columns": SEED_FEATURES, "data": sample[SEED_FEATURES].values.tolist()}})


def wrk(url: str, body: str, duration: int, connections: int) -> dict[str, float]:
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        # A Lua long string with level-2 brackets: the JSON body may contain "]]".
        script.write(
            f'wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\nwrk.body = [==[{body}]==]\n'
        )
    try:
        result = subprocess.run(
            ["wrk", "-t2", f"-c{connections}", f"-d{duration}s", "--latency", "-s", script.name, url],
            capture_output=True,
            text=True,
            check=True,
            timeout=duration + 60,
        )
    finally:
        os.unlink(script.name)
    out = result.stdout
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if errors:
        raise RuntimeError(f"{url} answered {errors.group(1)} errors under load:\n{out}")
    return {
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


@contextlib.contextmanager
def container(client, image: str, workers: int):
    port = free_port()
    created = client.create_container(
        image,
        environment={"ASGARD_SERVING_PORT": str(port), "ASGARD_SERVING_WORKERS": str(workers)},
        host_config=client.create_host_config(network_mode="host"),
    )
    started = time.perf_counter()
    client.start(created)
    try:
        wait_healthy(f"http://127.0.0.1:{port}/health")
        yield f"http://127.0.0.1:{port}", time.perf_counter() - started
    finally:
        client.remove_container(created, force=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=int, default=10, help="seconds per wrk run")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--customers", type=int, default=20_000, help="training rows of the sample models")
    parser.add_argument("--starts", type=int, default=5, help="container starts timed for start -> healthy")
    parser.add_argument(
        "--reuse-services", action="store_true", help="the running stack ASGARD_* describes (else a fresh one)"
    )
    args = parser.parse_args()

    import docker
    import httpx

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
        for label, framework in MODELS.items():
            name = f"bench_{label}"
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

            with (
                container(client, image, args.workers) as (ours, _),
                mlflow_serve(f"models:/{name}/{version}", settings.mlflow_url, args.workers) as theirs,
            ):
                check = bodies[100]
                ours_labels = httpx.post(
                    f"{ours}/invocations", content=check, headers={"content-type": "application/json"}
                ).json()["predictions"]
                their_labels = httpx.post(
                    f"{theirs}/invocations", content=check, headers={"content-type": "application/json"}
                ).json()["predictions"]
                same = [int(a) for a in ours_labels] == [int(b) for b in their_labels]
                print(f"  100-row request: labels identical to mlflow models serve: {same}", flush=True)
                if not same:
                    failures.append(f"{label}: labels differ from mlflow models serve")
                for rows, body in bodies.items():
                    baseline = wrk(f"{theirs}/invocations", body, args.duration, args.connections)
                    measured = wrk(f"{ours}/invocations", body, args.duration, args.connections)
                    print(
                        f"  {rows:>3} row(s), {args.workers} worker(s): "
                        f"mlflow models serve {baseline['rps']:.0f} req/s "
                        f"p50 {baseline['p50_ms']:.1f} ms p99 {baseline['p99_ms']:.1f} ms | asgard "
                        f"{measured['rps']:.0f} req/s p50 {measured['p50_ms']:.2f} ms p99 {measured['p99_ms']:.2f} ms"
                        f" | ratio req/s {measured['rps'] / baseline['rps']:.1f}x, "
                        f"p99 {measured['p99_ms'] / baseline['p99_ms']:.3f}x",
                        flush=True,
                    )

            healthy = []
            for _ in range(args.starts):
                with container(client, image, args.workers) as (_, seconds):
                    healthy.append(seconds)
            print(
                f"  container start -> /health ok: median {statistics.median(healthy):.2f}s "
                f"(min {min(healthy):.2f}s, max {max(healthy):.2f}s, {args.starts} starts); image {size_mb:.0f} MB",
                flush=True,
            )
    if failures:
        print("FAILED: " + "; ".join(failures))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
