"""``/feast``: the feature registry, as in the seed's API."""

from __future__ import annotations

from typing import Any

from fastapi import Depends, FastAPI, Request

from asgard.api import jobs
from asgard.api.mlops import add_error_handlers
from asgard.api.schemas import FeatureRegistration, JobSubmitted
from asgard.api.security import BodyLimit, CallerAirflow, caller, offloaded, requires


def create_app() -> FastAPI:
    app = FastAPI(
        title="Asgard Feast API",
        version="1",
        description="The seed's `/feast` API inside Airflow. Authenticate with Airflow's JWT (`POST /auth/token`).",
        dependencies=[Depends(caller)],
    )
    add_error_handlers(app)
    app.add_middleware(BodyLimit)

    @app.get(
        "/status",
        summary="The Feast project, its stores and what its registry holds",
        dependencies=[requires("GET", "register_features")],
    )
    @offloaded
    def feast_status() -> dict[str, Any]:
        from asgard.features.store import open_store, store_status

        return {"status": "healthy", **store_status(open_store())}

    @app.get("/features", summary="The registered feature views", dependencies=[requires("GET", "register_features")])
    @offloaded
    def list_features() -> dict[str, Any]:
        from asgard.features.registration import describe_views
        from asgard.features.store import open_store

        views = describe_views(open_store())
        return {"feature_views": views, "total": len(views)}

    @app.post(
        "/features",
        status_code=202,
        response_model=JobSubmitted,
        summary="Register a feature view",
        dependencies=[requires("POST", "register_features")],
    )
    @offloaded
    def register_features(body: FeatureRegistration, api: CallerAirflow, request: Request) -> dict[str, Any]:
        job = jobs.submit(api, "register_features", body.conf())
        # Jobs are followed on the /mlops side, where all of them are.
        mlops_root = request.scope.get("root_path", "").rsplit("/", 1)[0] + "/mlops"
        return {**job, "status_url": f"{request.url.scheme}://{request.url.netloc}{mlops_root}/jobs/{job['job_id']}"}

    return app
