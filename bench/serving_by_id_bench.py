"""Benchmark: predicting by entity id (the image reads the online store) vs the same rows sent as features.

One churn model trained on the sample customers' ``customer_features``; its serving image built by
the platform's builder twice — before its lineage names the view (no online reader) and after — and
the image sizes printed (target: growth <= 100 MB). The customers' features are materialized into
both online stores in Feast's format: the embedded profile's SQLite file (mounted read-only into the
container, as the Docker target mounts it) and the machine's real Redis (database 15).

For each store, and for 1 and 100 ids per request, ``wrk`` drives ``POST /predict`` with
``{"entities": {"customer_id": [...]}}`` side by side with the same rows sent as ``{"inputs": ...}``
(the features the image itself returned for those ids), in turns, the median of each; the
ratios of p99 (target <= 2x) and requests/s are printed. Before timing, the answers by id must equal
the answers by features.

    python bench/serving_by_id_bench.py                              # 10 s per load run (not part of CI)
    python bench/serving_by_id_bench.py --duration 1 --customers 3000  # smoke size
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "plugins"), str(REPO / "include")]

from common import embedded_services, exit_code  # noqa: E402
from serving_bench import container, post, wrk  # noqa: E402

# A database of the machine's Redis no test or other benchmark uses (./asgard test runs streams at once).
REDIS_DB = 7
IMAGE = "asgard-bench/by-id"


def feature_home(folder: Path, customers: int):
    """A Feast home of its own (gold layer, registry, SQLite online store) with the customers' newest
    features materialized; the settings that name it."""
    from datetime import timedelta

    from asgard.core.settings import Settings
    from asgard.features import materialization
    from asgard.features import store as feature_store
    from sample_data.gold_layer import GoldSpec, write_gold_layer

    settings = Settings(home=folder, profile="embedded")
    spec = GoldSpec(customers=customers, days=1)
    previous = os.environ.get("ASGARD_HOME")
    os.environ["ASGARD_HOME"] = str(folder)
    try:
        write_gold_layer(spec, log=lambda _: None)
        feature_store.apply_repo(settings)
        window = materialization.Window("customer_features", spec.start_time, spec.end_time + timedelta(seconds=1))
        stores = {
            "sqlite": feature_store.open_store(settings),
            "redis": feature_store.open_store(
                settings, online_store={"type": "redis", "connection_string": f"127.0.0.1:6379,db={REDIS_DB}"}
            ),
        }
        import redis

        redis.Redis(host="127.0.0.1", port=6379, db=REDIS_DB).flushdb()
        for store in stores.values():
            materialization.materialize_window(store, window)
    finally:
        if previous is None:
            os.environ.pop("ASGARD_HOME")
        else:
            os.environ["ASGARD_HOME"] = previous
    return settings, stores


def build(client, hook, ref, folder: Path, store, tag: str, base_image: str) -> tuple[str, float, dict]:
    from asgard.hooks.docker import build_image
    from asgard.serving import image as serving_image

    context = serving_image.render_context(hook, ref, folder, feature_store=store)
    image = f"{IMAGE}:{tag}"
    build_image(
        client,
        context.folder,
        image,
        build_args=serving_image.build_arguments(context, base_image),
        labels=context.labels,
        progress=lambda _: None,
    )
    return image, client.inspect_image(image)["Size"] / 1e6, context.info


def side_by_side(url: str, bodies: dict[str, str], args: argparse.Namespace) -> dict[str, dict]:
    """Features and ids alternating (features, ids, features, ids, ...), ``--rounds`` runs of each, each
    run ``--duration`` / 2 s; each side's median run by p99 (and its median requests/s). One run's p99 is
    a few slow moments of a noisy machine: a median of several, taken in turns, lands them on both sides."""
    runs: dict[str, list[dict]] = {name: [] for name in bodies}
    for _ in range(args.rounds):
        for name, body in bodies.items():
            runs[name].append(wrk(f"{url}/predict", body, max(1, args.duration // 2), args.connections))
    return {
        name: {
            "rps": statistics.median(run["rps"] for run in results),
            "p50_ms": statistics.median(run["p50_ms"] for run in results),
            "p99_ms": statistics.median(run["p99_ms"] for run in results),
            "p99s": [run["p99_ms"] for run in results],
        }
        for name, results in runs.items()
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=int, default=10, help="seconds per wrk run")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=5, help="load runs of each body, in turns (medians reported)")
    parser.add_argument("--customers", type=int, default=20_000, help="sample customers (training rows, online rows)")
    parser.add_argument(
        "--reuse-services", action="store_true", help="the running stack ASGARD_* describes (else a fresh one)"
    )
    args = parser.parse_args()

    import docker
    from mlflow import MlflowClient

    from asgard.deploy.docker_target import ONLINE_STORE_INSIDE
    from asgard.features.online_reading import serving_location
    from asgard.hooks.mlflow import MlflowHook
    from asgard.registry.versions import FEATURE_VIEWS_TAG, resolve_model_version
    from sample_data.models import register_sample_model

    failures = []
    services = embedded_services(["mlflow", "docker"], reuse=args.reuse_services, prefix="asgard-by-id-bench-")
    with services as (settings, _), tempfile.TemporaryDirectory(prefix="asgard-by-id-bench-") as scratch:
        home = Path(scratch)
        _, stores = feature_home(home / "feast-home", args.customers)
        client = docker.APIClient(base_url=settings.docker_url, version="auto")
        hook = MlflowHook()
        name = "bench_by_id"
        version = register_sample_model(settings.mlflow_url, name, customers=args.customers)
        _, plain_mb, _ = build(
            client, hook, resolve_model_version(hook, name, version), home / "plain", stores["sqlite"], "plain",
            settings.serving_base_image,
        )  # fmt: skip
        MlflowClient(settings.mlflow_url).set_model_version_tag(name, version, FEATURE_VIEWS_TAG, "customer_features")
        online, online_mb, info = build(
            client, hook, resolve_model_version(hook, name, version), home / "online", stores["sqlite"], "online",
            settings.serving_base_image,
        )  # fmt: skip
        if not info.get("online_features"):
            print(f"FAILED: the image cannot read by id: {info.get('online_features_reason')}")
            return 1
        print(
            f"image without the online reader {plain_mb:.0f} MB, with it {online_mb:.0f} MB: "
            f"growth {online_mb - plain_mb:.1f} MB (target <= 100)",
            flush=True,
        )
        if online_mb - plain_mb > 100:
            failures.append(f"the image grew {online_mb - plain_mb:.1f} MB")

        sqlite_file = Path(serving_location(stores["sqlite"].config).removeprefix("sqlite:///"))
        # Exposed: the features read by id are sent back as inputs, to check both answers agree.
        exposed = {"ASGARD_SERVING_EXPOSE_FEATURES": "true"}
        wiring = {
            "sqlite": (
                {"ASGARD_ONLINE_STORE": f"sqlite:///{ONLINE_STORE_INSIDE}/{sqlite_file.name}", **exposed},
                [f"{sqlite_file.parent}:{ONLINE_STORE_INSIDE}:ro"],
            ),
            "redis": ({"ASGARD_ONLINE_STORE": f"redis://127.0.0.1:6379/{REDIS_DB}", **exposed}, []),
        }
        for store_name, (environment, binds) in wiring.items():
            with container(client, online, 1, environment=environment, binds=binds) as served:
                url = served.url
                for rows in (1, 100):
                    ids = list(range(7, 7 + rows))
                    by_id = {"entities": {"customer_id": ids}, "return_probabilities": True}
                    read = post(f"{url}/predict", json.dumps({**by_id, "return_features": True}))
                    by_features = {"inputs": read["features"], "return_probabilities": True}
                    sent = post(f"{url}/predict", json.dumps(by_features))
                    same = (sent["predictions"], sent["probabilities"]) == (read["predictions"], read["probabilities"])
                    if not same:
                        failures.append(f"{store_name}, {rows} id(s): answers by id differ from answers by features")
                    best = side_by_side(url, {"features": json.dumps(by_features), "ids": json.dumps(by_id)}, args)
                    features, entity = best["features"], best["ids"]
                    print(
                        f"  {store_name}, {rows:>3} id(s): by features {features['rps']:.0f} req/s p50 "
                        f"{features['p50_ms']:.2f} ms p99 {features['p99_ms']:.2f} ms | by id {entity['rps']:.0f} "
                        f"req/s p50 {entity['p50_ms']:.2f} ms p99 {entity['p99_ms']:.2f} ms | p99 ratio id / features "
                        f"{entity['p99_ms'] / features['p99_ms']:.2f} (target <= 2), req/s ratio "
                        f"{entity['rps'] / features['rps']:.2f}; answers identical: {same} "
                        f"(medians of {args.rounds} runs; p99s by features {_listed(features['p99s'])}, "
                        f"by id {_listed(entity['p99s'])})",
                        flush=True,
                    )
        import redis

        redis.Redis(host="127.0.0.1", port=6379, db=REDIS_DB).flushdb()
    return exit_code(failures)


def _listed(values: list[float]) -> str:
    return "/".join(f"{value:.1f}" for value in values)


if __name__ == "__main__":
    sys.exit(main())
