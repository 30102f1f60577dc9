"""Benchmark: how long the platform takes to get ready for work, against the way it used to be done.

Script environments: the platform's path (uv, wheels only, its download cache shared with the
platform's own virtualenv) against ``python -m venv`` + ``pip install``, each cold (an empty cache)
and cached (the environment of that requirements set already exists, or the cache is warm).
Serving images: the platform's Dockerfile (layers from what changes least to what changes most, uv
installing the wheels) against the previous one (pip, the model's labels before the dependencies),
for a model's first version and its next one (same dependencies, a new model). A script's run, in
the platform's sandbox against a plain subprocess (how scripts ran before the sandbox), in the same
environment: the sandbox's cost per run.

    python bench/startup_bench.py                 # the example script's requirements, RF images
    python bench/startup_bench.py --smoke         # one small requirement, tiny models (CI)

Targets (issues 30, 22): a new script environment <= 20 s and a cached one <= 1 s; a next version's
image <= 15 s, and a script model's no slower than a train_model one; the sandbox adds <= 1 s
to a run.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "plugins"), str(REPO / "include")]

EXAMPLE = ["scikit-learn", "pandas", "feast[duckdb]", "pyiceberg[sql-sqlite,pyarrow]"]
SMOKE = ["six"]
# The serving Dockerfile as it was before issue 30: pip installs the wheels, and the model's labels
# come before the dependencies, so every new version rebuilt every layer after them.
PREVIOUS_DOCKERFILE = """
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE} AS dependencies
COPY requirements.txt /build/requirements.txt
COPY wheels/ /build/wheels/
COPY app/ /opt/asgard/app/
RUN python3 -m venv /opt/venv \\
 && /opt/venv/bin/pip install --no-index --find-links /build/wheels --no-cache-dir --disable-pip-version-check \\
      -r /build/requirements.txt \\
 && /opt/venv/bin/pip uninstall --yes --quiet pip
FROM ${BASE_IMAGE}
ARG MODEL_VERSION
LABEL io.asgard.model.version="${MODEL_VERSION}"
COPY --from=dependencies /opt/venv /opt/venv
COPY --from=dependencies /opt/asgard/app /opt/asgard/app
COPY model/ /opt/asgard/model/
ENV PATH=/opt/venv/bin:$PATH PYTHONPATH=/opt/asgard/app ASGARD_MODEL_DIR=/opt/asgard/model
USER 10001:10001
ENTRYPOINT ["python3", "-m", "asgard_serving"]
"""


def timed(command: list[str], env: dict[str, str] | None = None) -> float:
    started = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(command[:4])} failed:\n{result.stderr[-2000:]}")
    return time.perf_counter() - started


def pip_environment(root: Path, requirements: list[str], cache: Path | None) -> float:
    """The old way: venv + pip install of ``requirements``, with pip's cache in ``cache`` (None: no cache)."""
    target = root / f"pip-{time.monotonic_ns()}"
    env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    cache_option = ["--cache-dir", str(cache)] if cache else ["--no-cache-dir"]
    seconds = timed(["/usr/bin/python3.11", "-m", "venv", str(target)])
    seconds += timed(
        [str(target / "bin" / "pip"), "install", "-q", *cache_option, "-c", str(REPO / "constraints.txt"),
         *requirements],
        env,
    )  # fmt: skip
    shutil.rmtree(target)
    return seconds


def environments(full: list[str], scratch: Path) -> dict[str, float]:
    from asgard.core.build_cache import PythonEnvironments
    from asgard.core.settings import Settings, get_settings

    settings = get_settings()
    cold = Settings(**{**settings.model_dump(), "cache_dir": scratch / "cold-cache"})
    shared = Settings(**{**settings.model_dump(), "cache_dir": scratch / "shared"})
    (scratch / "shared").mkdir()
    (scratch / "shared" / "uv").symlink_to(settings.cache_dir / "uv")  # the platform's own download cache
    times = {}
    started = time.perf_counter()
    PythonEnvironments(cold).ensure(full, progress=lambda _: None)
    times["uv, empty download cache"] = time.perf_counter() - started
    started = time.perf_counter()
    PythonEnvironments(shared).ensure(full, progress=lambda _: None)
    times["uv, the platform's download cache (a fresh machine after set-up)"] = time.perf_counter() - started
    started = time.perf_counter()
    PythonEnvironments(shared).ensure(full, progress=lambda _: None)
    times["uv, environment already built (cached)"] = time.perf_counter() - started
    times["pip, no cache"] = pip_environment(scratch, full, None)
    pip_cache = scratch / "pip-cache"
    pip_environment(scratch, full, pip_cache)  # fills pip's cache
    times["pip, warm pip cache"] = pip_environment(scratch, full, pip_cache)
    return times


def script_starts(full: list[str], imports: str, scratch: Path, runs: int) -> dict[str, float]:
    """The sandbox's cost per run: the same script in the same environment, run by the platform (its
    sandbox: namespaces, cgroup, read-only binds, uid 65534) and as scripts ran before it (a plain
    subprocess of the worker), the median of ``runs`` each."""
    import statistics

    from asgard.core import sandbox
    from asgard.core.build_cache import PythonEnvironments
    from asgard.core.settings import Settings, get_settings
    from asgard.training.scripts import runner

    settings = Settings(**{**get_settings().model_dump(), "cache_dir": scratch / "shared"})
    python = PythonEnvironments(settings).ensure(full, progress=lambda _: None)
    scripts = {"print(1)": "print(1)", f"import {imports}": f"import {imports}\nprint(1)"}
    times = {}
    for label, source in scripts.items():
        sandboxed, plain = [], []
        for index in range(runs):
            workdir = scratch / "runs" / f"{len(times)}-{index}" / "work"
            workdir.mkdir(parents=True)
            script = runner.UserScript("job.py", source)
            started = time.perf_counter()
            env = {"PATH": "/usr/bin:/bin"}
            runner.run_script(script, python, workdir, env, sandbox.Limits(), output=lambda _: None)
            sandboxed.append(time.perf_counter() - started)
            (workdir / "plain.py").write_text(source)
            plain.append(timed([str(python), str(workdir / "plain.py")], {"PATH": "/usr/bin:/bin"}))
        times[f"{label}: sandboxed (the platform)"] = statistics.median(sandboxed)
        times[f"{label}: plain subprocess (before the sandbox)"] = statistics.median(plain)
    return times


def register_script_model(tracking_uri: str, name: str, scratch: Path, customers: int) -> str:
    """A version the way ``train_script`` makes one: the example script, run in the platform's script
    environment for its requirements, logs its model; ``register_script_model`` registers it. The run
    is a plain subprocess here (the sandbox's cost is measured above): only the image build is timed."""
    from mlflow import MlflowClient

    from asgard.core.settings import get_settings
    from asgard.local.examples import EXAMPLE_SCRIPT
    from asgard.training.scripts import pipeline
    from asgard.training.scripts.runner import ScriptEnvironments

    requirements = ["scikit-learn", "pandas"]
    python = ScriptEnvironments().ensure(requirements, progress=lambda _: None)
    client = MlflowClient(tracking_uri)
    experiment = "startup-bench-scripts"
    if client.get_experiment_by_name(experiment) is None:
        client.create_experiment(experiment)
    run = client.create_run(client.get_experiment_by_name(experiment).experiment_id)
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": str(scratch),
        "MLFLOW_TRACKING_URI": tracking_uri,
        "MLFLOW_RUN_ID": run.info.run_id,
        "EXPERIMENT_NAME": experiment,
        "MODEL_NAME": name,
        "USE_FEAST": "false",
        "N_CUSTOMERS": str(customers),
    }
    timed([str(python), str(EXAMPLE_SCRIPT)], env)
    params = {"model_name": name, "use_feast": True, "script_name": EXAMPLE_SCRIPT.name, "requirements": requirements}
    upload = {"team": get_settings().default_team}  # what check_upload hands on: the team the version is for
    registered = pipeline.register_script_model(
        params,
        {"mlflow_run_id": run.info.run_id},
        upload,
        dag_id="train_script",
        run_id=f"startup-bench-{run.info.run_id}",
    )
    return registered["version"]


def images(customers: int, scratch: Path, *, reuse_services: bool, smoke: bool = False) -> dict[str, float]:
    """First and next version's image: a ``train_model`` version with the platform's Dockerfile and with
    the previous one, and a ``train_script`` version (the example script's) with the platform's."""
    from asgard.hooks.docker import build_image
    from asgard.hooks.mlflow import MlflowHook
    from asgard.registry.versions import resolve_model_version
    from asgard.serving import image as serving_image
    from common import embedded_services
    from sample_data.models import register_sample_model

    times = {}
    with embedded_services(["mlflow", "docker"], reuse=reuse_services, prefix="asgard-startup-bench-") as (settings, _):
        import docker

        client = docker.APIClient(base_url=settings.docker_url, version="auto")
        hook = MlflowHook()
        kinds = {
            "platform Dockerfile": lambda name: register_sample_model(settings.mlflow_url, name, customers=customers),
            "previous Dockerfile": lambda name: register_sample_model(settings.mlflow_url, name, customers=customers),
            "script model, platform Dockerfile": lambda name: register_script_model(
                settings.mlflow_url, name, scratch, customers
            ),
        }
        for kind, register in kinds.items():
            name = "startup_" + kind.split(",")[0].split()[0]
            for which in ("first", "next"):
                version = register(name)
                if smoke and kind == "previous Dockerfile" and which == "first":
                    continue  # its next version rebuilds every layer anyway: the smoke run builds it once
                ref = resolve_model_version(hook, name, version)
                context = serving_image.render_context(hook, ref, scratch / "contexts" / f"{name}-{version}")
                if kind == "previous Dockerfile":
                    (context.folder / "Dockerfile").write_text(PREVIOUS_DOCKERFILE)
                started = time.perf_counter()
                build_image(
                    client,
                    context.folder,
                    f"startup-bench/{name}:v{version}",
                    build_args={"BASE_IMAGE": settings.serving_base_image, "MODEL_VERSION": version},
                    labels=context.labels,
                    progress=lambda _: None,
                )
                times[f"{kind}, {which} version"] = time.perf_counter() - started
    return times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="one small requirement and tiny models (CI)")
    parser.add_argument(
        "--reuse-services", action="store_true", help="the running stack ASGARD_* describes (else a fresh one)"
    )
    args = parser.parse_args()
    # A script's environment holds its requirements and the platform's (mlflow-skinny, pandas, pyarrow);
    # the smoke run builds one small requirement only.
    requirements = SMOKE if args.smoke else [*EXAMPLE, "mlflow-skinny", "pandas", "pyarrow"]
    with tempfile.TemporaryDirectory(prefix="asgard-startup-bench-") as scratch:
        env_times = environments(requirements, Path(scratch))
        imports = "six" if args.smoke else "pandas, mlflow"
        start_times = script_starts(requirements, imports, Path(scratch), runs=2 if args.smoke else 5)
        image_times = images(
            1000 if args.smoke else 5000, Path(scratch), reuse_services=args.reuse_services, smoke=args.smoke
        )
    print(f"script environment for {', '.join(requirements)}:")
    for label, seconds in env_times.items():
        print(f"    {label:<66} {seconds:7.1f}s")
    new = env_times["uv, the platform's download cache (a fresh machine after set-up)"]
    print(f"ratio new environment, pip no cache / uv: {env_times['pip, no cache'] / new:.1f}  (target uv <= 20 s)")
    cached = env_times["uv, environment already built (cached)"]
    print(f"ratio cached environment, pip warm cache / uv: {env_times['pip, warm pip cache'] / cached:.1f}"
          "  (target uv <= 1 s)")  # fmt: skip
    print("a script's run, start to exit (median):")
    for label, seconds in start_times.items():
        print(f"    {label:<66} {seconds:7.2f}s")
    for label in ("print(1)", f"import {imports}"):
        sandboxed = start_times[f"{label}: sandboxed (the platform)"]
        overhead = sandboxed - start_times[f"{label}: plain subprocess (before the sandbox)"]
        print(f"sandbox overhead per run, {label}: {overhead:+.2f}s  (target <= 1 s)")
    print("serving image builds (random forests: train_model's sample, the example script's; wheels downloaded):")
    for label, seconds in image_times.items():
        print(f"    {label:<66} {seconds:7.1f}s")
    for which in ("first", "next"):
        if f"previous Dockerfile, {which} version" in image_times:
            previous = image_times[f"previous Dockerfile, {which} version"]
            print(f"ratio {which} version, previous / platform Dockerfile: "
                  f"{previous / image_times[f'platform Dockerfile, {which} version']:.1f}")  # fmt: skip
        script = (
            image_times[f"script model, platform Dockerfile, {which} version"]
            / image_times[f"platform Dockerfile, {which} version"]
        )
        print(f"ratio {which} version, script model / train_model model: {script:.1f}  (target <= 1: no slower)")
    print("(target: next version <= 15 s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
