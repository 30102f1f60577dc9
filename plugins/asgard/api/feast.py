"""``/feast``: the feature registry, as in the seed's API, and loading a user's own data into the gold layer.

A gold load is a file sent as the body (CSV or Parquet, within the API's body limit) or a path the
platform reads (under the data roots, never inside the platform's own folders): the caller is not
trusted with anything else on the server. The load itself is :mod:`asgard.features.gold_load`.
"""

from __future__ import annotations

import functools
from typing import Annotated, Any, Literal

import anyio
from fastapi import Depends, FastAPI, Path, Query, Request
from pydantic import Field

from asgard.api import jobs
from asgard.api.mlops import add_error_handlers
from asgard.api.schemas import ClosedModel, DagConf, FeatureRegistration, JobSubmitted
from asgard.api.security import (
    BodyLimit,
    Caller,
    CallerAirflow,
    CallerIdentity,
    ServerTiming,
    caller,
    limiter,
    offloaded,
    requires,
)
from asgard.core.team_settings import TEAM_NAME

GOLD_NAME = {"pattern": r"^[A-Za-z_][A-Za-z0-9_]*$", "max_length": 128}
TableName = Annotated[str, Path(description="The gold table (created by its first load).", **GOLD_NAME)]
ColumnName = Annotated[str, Query(**GOLD_NAME)]
Mode = Literal["append", "replace"]
TeamParam = Annotated[
    str | None,
    Query(
        pattern=f"^{TEAM_NAME.pattern}$",
        description="The team the load is for: a table it creates is that team's (default: the caller's only team).",
    ),
]


class MaterializeRequest(DagConf):
    """A ``materialize_features`` run: the views (default: every registered one) and, for a backfill, the window."""

    feature_views: list[Annotated[str, Field(**GOLD_NAME)]] | None = Field(None, max_length=100)
    start: str | None = Field(None, max_length=64, description="ISO time; with end: a backfill window")
    end: str | None = Field(None, max_length=64, description="ISO time")


class GoldPathLoad(ClosedModel):
    """Load a file the platform can read: under the data roots (ASGARD_DATA_ROOTS), a local path or s3://."""

    path: str = Field(
        min_length=1, max_length=4096, pattern=r"^(s3://|/)\S+$", description="An absolute path or s3:// URI."
    )
    entity_column: str = Field(**GOLD_NAME)
    timestamp_column: str = Field(**GOLD_NAME)
    mode: Mode = "append"
    format: Literal["csv", "parquet"] | None = None
    team: str | None = Field(
        None,
        pattern=f"^{TEAM_NAME.pattern}$",
        description="The team whose data roots hold the file, and the team the load is for: a table it creates "
        "is that team's (default: the caller's only team).",
    )


def _data_team(who: Caller, requested: str | None) -> str:
    """The team whose data roots a caller's path is read from: the one named (one of theirs), else their
    only team (an admin of none: the default team's). A 403 otherwise, naming the caller's teams."""
    from fastapi import HTTPException, status

    from asgard.api.teams import caller_actor
    from asgard.core.settings import get_settings

    actor = caller_actor(who)
    if requested and (actor.admin or requested in actor.teams):
        return requested
    if not requested and len(actor.teams) == 1:
        return next(iter(actor.teams))
    if not requested and not actor.teams and actor.admin:
        return get_settings().default_team
    reason = f"is not a member of team {requested!r}" if requested else "must name one of their teams ('team')"
    raise HTTPException(status.HTTP_403_FORBIDDEN, detail=f"{actor.describe()} {reason}")


def create_app() -> FastAPI:
    app = FastAPI(
        title="Asgard Feast API",
        version="1",
        description="The seed's `/feast` API inside Airflow. Authenticate with Airflow's JWT (`POST /auth/token`).",
        dependencies=[Depends(caller)],
    )
    add_error_handlers(app)
    app.add_middleware(BodyLimit)
    app.add_middleware(ServerTiming)  # outermost: BodyLimit's refusals are timed too

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
        return {**job, "status_url": _job_url(request, job)}

    @app.post(
        "/materialize",
        status_code=202,
        response_model=JobSubmitted,
        summary="Materialize feature views into the online store (materialize_features)",
        dependencies=[requires("POST", "materialize_features")],
    )
    @offloaded
    def materialize(body: MaterializeRequest, api: CallerAirflow, request: Request) -> dict[str, Any]:
        job = jobs.submit(api, "materialize_features", body.conf())
        return {**job, "status_url": _job_url(request, job)}

    add_gold_routes(app)
    return app


def _job_url(request: Request, job: dict[str, Any]) -> str:
    """Jobs are followed on the /mlops side, where all of them are."""
    mlops_root = request.scope.get("root_path", "").rsplit("/", 1)[0] + "/mlops"
    return f"{request.url.scheme}://{request.url.netloc}{mlops_root}/jobs/{job['job_id']}"


def add_gold_routes(app: FastAPI) -> None:
    """The gold layer's tables, and loading a file into one (one Iceberg snapshot, or nothing)."""

    @app.get("/gold", summary="The gold layer's tables", dependencies=[requires("GET", "register_features")])
    @offloaded
    def gold_tables() -> dict[str, Any]:
        from asgard.features.gold import list_tables

        tables = list_tables()
        return {"tables": tables, "total": len(tables)}

    @app.post(
        "/gold/{table_name}",
        status_code=201,
        summary="Load the body (a CSV or Parquet file) into a gold table",
        description="The body is the file itself, at most the API's body limit (2 MB); larger files are "
        "loaded from a path (`POST /gold/{table_name}/from-path`). `append` adds its rows, `replace` "
        "swaps the table's rows for them; either is one snapshot. Every problem found is a 422 naming it.",
        dependencies=[requires("POST", "register_features")],
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {
                    "text/csv": {"schema": {"type": "string"}},
                    "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
                },
            }
        },
    )
    async def load_gold_upload(
        table_name: TableName,
        request: Request,
        entity_column: ColumnName,
        timestamp_column: ColumnName,
        who: CallerIdentity,
        mode: Mode = "append",
        format: Literal["csv", "parquet"] = "csv",
        team: TeamParam = None,
    ) -> dict[str, Any]:
        from asgard.features.gold_load import load_bytes

        data = await request.body()  # BodyLimit has capped it
        load = _load_request(who, team, table_name, entity_column, timestamp_column, mode)
        work = functools.partial(load_bytes, data, format, load, source=f"upload to {table_name}")
        return (await anyio.to_thread.run_sync(work, limiter=limiter())).to_dict()

    @app.post(
        "/gold/{table_name}/from-path",
        status_code=201,
        summary="Load a CSV or Parquet file under the data roots into a gold table",
        dependencies=[requires("POST", "register_features")],
    )
    @offloaded
    def load_gold_path(table_name: TableName, body: GoldPathLoad, who: CallerIdentity) -> dict[str, Any]:
        from asgard.features.gold_load import load_path

        load = _load_request(who, body.team, table_name, body.entity_column, body.timestamp_column, body.mode)
        return load_path(body.path, load, team=load.team, fmt=body.format).to_dict()


def _load_request(who: Caller, team: str | None, table: str, entity: str, timestamp: str, mode: str) -> Any:
    """A gold load for the caller's team (:func:`_data_team`): a table it creates is that team's, and it
    changes only that team's tables (an admin's, any table)."""
    from asgard.api.teams import caller_actor
    from asgard.features.gold_load import LoadRequest

    team = _data_team(who, team)
    return LoadRequest(table, entity, timestamp, mode, team=team, any_table=caller_actor(who).admin)
