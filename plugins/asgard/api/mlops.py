"""``/mlops``: training, the model registry, batch scoring and monitoring, as in the seed's API."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from asgard.api import jobs
from asgard.api.deploy_policy import add_deploy_policy_routes, with_deploy_decisions
from asgard.api.schemas import (
    BatchScoringRequest,
    JobSubmitted,
    MonitoringHistoryRequest,
    MonitoringRecordRequest,
    MonitoringRunRequest,
    RegistryRequest,
    TrainingUpload,
    TrainModelRequest,
    refusal_detail,
)
from asgard.api.security import (
    BodyLimit,
    CallerAirflow,
    CallerIdentity,
    ServerTiming,
    authorize,
    caller,
    offloaded,
    requires,
)
from asgard.api.teams import guard_model, guard_run, visible_models
from asgard.core.errors import InputError, redact_url
from asgard.core.teams import TeamRefusal
from asgard.hooks.airflow_api import AirflowApiError
from asgard.registry.models import ModelNotFoundError

JOB_DAGS = ("train_script", "train_model", "score_batch", "monitor_model")


def create_app() -> FastAPI:
    app = FastAPI(
        title="Asgard MLOps API",
        version="1",
        description="The seed's `/mlops` API inside Airflow: requests become DAG runs; answers come from "
        "MLflow and the monitoring store. Authenticate with Airflow's JWT (`POST /auth/token`).",
        dependencies=[Depends(caller)],
    )
    add_error_handlers(app)
    app.add_middleware(BodyLimit)
    app.add_middleware(ServerTiming)  # outermost: BodyLimit's refusals are timed too

    @app.get("/health", summary="The API answers and the caller is authenticated")
    def health() -> dict[str, str]:
        return {"status": "healthy"}

    @app.get("/status", summary="MLflow, the registry and the job DAGs")
    @offloaded
    def platform_status(api: CallerAirflow) -> dict[str, Any]:
        from asgard.core.settings import get_settings
        from asgard.hooks.mlflow import MlflowHook

        hook = MlflowHook()
        reachable, detail = hook.test_connection()
        models = len(hook.client.search_registered_models(max_results=1000)) if reachable else None
        dags = {dag_id: api.dag_state(dag_id) for dag_id in (*JOB_DAGS, "deploy_model", "register_features")}
        return {
            "status": "healthy" if reachable else "degraded",
            "profile": get_settings().profile,
            "mlflow": {
                "tracking_uri": redact_url(hook.tracking_uri),
                "reachable": reachable,
                "detail": detail.replace(hook.tracking_uri, redact_url(hook.tracking_uri)),
            },
            "registered_models": models,
            "dags": dags,
        }

    @app.post(
        "/training/upload",
        status_code=202,
        response_model=JobSubmitted,
        summary="Train with a script",
        dependencies=[requires("POST", "train_script")],
    )
    @offloaded
    def upload_training_script(
        body: TrainingUpload, who: CallerIdentity, api: CallerAirflow, request: Request
    ) -> dict[str, Any]:
        guard_model(who, body.model_name, may_create=True, team=body.conf().get("team"))
        job = jobs.submit(api, "train_script", body.conf())
        return {**job, "status_url": _job_url(request, job), "model_name": body.model_name}

    @app.get("/training/jobs/{job_id}", summary="A job's status, task states, logs and resulting model version")
    @offloaded
    def training_job(job_id: str, who: CallerIdentity, api: CallerAirflow, logs: bool = True) -> dict[str, Any]:
        dag_id = jobs.locate(job_id)
        authorize(who, "GET", dag_id)
        guard_run(who, dag_id, job_id)
        return jobs.status(api, job_id, logs=logs)

    @app.get("/jobs/{job_id}", summary="Any job this API started (training, batch scoring, features)")
    @offloaded
    def job(job_id: str, who: CallerIdentity, api: CallerAirflow, logs: bool = True) -> dict[str, Any]:
        dag_id = jobs.locate(job_id)
        authorize(who, "GET", dag_id)
        guard_run(who, dag_id, job_id)
        return jobs.status(api, job_id, logs=logs)

    @app.get("/runs/{dag_id}/{run_id}", summary="Any run of a job DAG as a job, however it started (UI, REST...)")
    @offloaded
    def run(dag_id: str, run_id: str, who: CallerIdentity, api: CallerAirflow, logs: bool = True) -> dict[str, Any]:
        authorize(who, "GET", jobs.locate_run(dag_id))
        guard_run(who, dag_id, run_id)
        return jobs.status(api, run_id, logs=logs, dag_id=dag_id)

    @app.post(
        "/models",
        status_code=202,
        response_model=JobSubmitted,
        summary="Train a model (train_model)",
        dependencies=[requires("POST", "train_model")],
    )
    @offloaded
    def train_model(
        body: TrainModelRequest, who: CallerIdentity, api: CallerAirflow, request: Request
    ) -> dict[str, Any]:
        guard_model(who, body.model_name, may_create=True, team=body.conf().get("team"))
        job = jobs.submit(api, "train_model", body.conf())
        return {**job, "status_url": _job_url(request, job), "model_name": body.model_name}

    @app.get(
        "/models",
        summary="Registered models, their aliases and newest version",
        dependencies=[requires("GET", "train_model")],
    )
    @offloaded
    def list_models(who: CallerIdentity) -> dict[str, Any]:
        from asgard.hooks.mlflow import MlflowHook

        models = visible_models(who, serving_models(MlflowHook()))
        return {"models": models, "total": len(models)}

    @app.get(
        "/models/{model_name}",
        summary="A model's versions, aliases, metrics and deployed endpoint",
        dependencies=[requires("GET", "train_model")],
    )
    @offloaded
    def get_model(model_name: str, who: CallerIdentity) -> dict[str, Any]:
        from asgard.hooks.mlflow import MlflowHook

        guard_model(who, model_name, reading=True)
        hook = MlflowHook()
        return with_deploy_decisions(hook, serving_model(hook, model_name))

    add_deploy_policy_routes(app)

    @app.post(
        "/registry",
        status_code=201,
        summary="Register the model an MLflow run logged",
        dependencies=[requires("POST", "train_model")],
    )
    @offloaded
    def register(body: RegistryRequest, who: CallerIdentity) -> dict[str, Any]:
        from asgard.hooks.mlflow import MlflowHook
        from asgard.registry.registration import register_run_model

        team = guard_model(who, body.model_name, may_create=True, team=body.team)
        return register_run_model(
            MlflowHook(), body.model_name, body.run_id, team=team, description=body.description, tags=body.tags
        )

    @app.post(
        "/serve/batch",
        status_code=202,
        response_model=JobSubmitted,
        summary="Score a batch (score_batch)",
        dependencies=[requires("POST", "score_batch")],
    )
    @offloaded
    def score_batch(
        body: BatchScoringRequest, who: CallerIdentity, api: CallerAirflow, request: Request
    ) -> dict[str, Any]:
        guard_model(who, body.model_name)
        job = jobs.submit(api, "score_batch", body.conf())
        version = None if body.model_version is None else str(body.model_version)
        return {
            **job,
            "status_url": _job_url(request, job),
            "model_name": body.model_name,
            "model_version": version,
            "output_path": body.output_path,
        }

    @app.post(
        "/monitoring",
        status_code=201,
        summary="Log monitoring metrics computed elsewhere",
        dependencies=[requires("POST", "monitor_model")],
    )
    @offloaded
    def log_monitoring(body: MonitoringRecordRequest, who: CallerIdentity) -> dict[str, Any]:
        from asgard.core.settings import get_settings

        guard_model(who, body.model_name)
        from asgard.monitoring.alerts import external_record
        from asgard.monitoring.store import MonitoringStore
        from asgard.monitoring.thresholds import Thresholds

        record = external_record(body.model_dump(exclude={"thresholds"}), Thresholds.from_dict(body.thresholds))
        MonitoringStore.at(get_settings().monitoring_db_url).add(record)
        return record.as_response()

    @app.post(
        "/monitoring/run",
        status_code=202,
        response_model=JobSubmitted,
        summary="Monitor now (monitor_model)",
        dependencies=[requires("POST", "monitor_model")],
    )
    @offloaded
    def run_monitoring(
        body: MonitoringRunRequest, who: CallerIdentity, api: CallerAirflow, request: Request
    ) -> dict[str, Any]:
        if body.model_name:
            guard_model(who, body.model_name)
        job = jobs.submit(api, "monitor_model", body.conf())
        return {**job, "status_url": _job_url(request, job), "model_name": body.model_name}

    @app.post(
        "/monitoring/history",
        summary="Monitoring records of a model, newest first, with a summary",
        dependencies=[requires("GET", "monitor_model")],
    )
    @offloaded
    def monitoring_history(body: MonitoringHistoryRequest, who: CallerIdentity) -> dict[str, Any]:
        from asgard.core.settings import get_settings

        guard_model(who, body.model_name, reading=True)
        from asgard.monitoring.store import MonitoringStore

        version = None if body.model_version is None else str(body.model_version)
        return MonitoringStore.at(get_settings().monitoring_db_url).history(
            body.model_name,
            model_version=version,
            metric_type=body.metric_type,
            start_date=body.start_date,
            end_date=body.end_date,
            limit=body.limit,
        )

    add_models_page(app)
    return app


def add_models_page(app: FastAPI) -> None:
    """The Models page the Airflow UI shows (``asgard_plugin``'s external view), behind Airflow's login."""
    from fastapi import HTTPException
    from fastapi.responses import HTMLResponse

    from asgard.api import models_page

    @app.get("/ui/models", include_in_schema=False, dependencies=[requires("GET", "train_model")])
    @offloaded
    def models_index(who: CallerIdentity) -> HTMLResponse:
        from asgard.core.settings import get_settings
        from asgard.hooks import airflow_hitl
        from asgard.hooks.mlflow import MlflowHook

        models = visible_models(who, serving_models(MlflowHook()))
        names = {model["model_name"] for model in models}
        import httpx

        try:
            found = airflow_hitl.waiting_approvals(get_settings().airflow_url, who.token)
        except (airflow_hitl.ApprovalError, httpx.HTTPError) as error:  # the models are shown all the same
            logging.getLogger(__name__).warning("the Models page lists no waiting decision: %s", error)
            found = []
        waiting = [
            {**item, "link": airflow_hitl.decision_link(item["run_id"])}
            for item in found
            if airflow_hitl.approval_model(item["subject"]) in names  # the caller's teams' models only
        ]
        return HTMLResponse(models_page.models_index(models, waiting))

    @app.get("/ui/models/{model_name}", include_in_schema=False, dependencies=[requires("GET", "train_model")])
    @offloaded
    def model_details(model_name: str, who: CallerIdentity) -> HTMLResponse:
        from asgard.core.settings import get_settings
        from asgard.hooks.mlflow import MlflowHook
        from asgard.monitoring.store import MonitoringStore

        guard_model(who, model_name, reading=True)
        hook = MlflowHook()
        model = serving_model(hook, model_name)
        history = MonitoringStore.at(get_settings().monitoring_db_url).history(model_name, limit=1000)
        return HTMLResponse(models_page.model_page(model, history, mlflow_url=redact_url(hook.tracking_uri)))

    @app.get(
        "/ui/reports/{model_name}/{report}", include_in_schema=False, dependencies=[requires("GET", "monitor_model")]
    )
    @offloaded
    def monitoring_report(model_name: str, report: str, who: CallerIdentity) -> HTMLResponse:
        import re

        from asgard.core.param_schemas import MODEL_NAME_PATTERN
        from asgard.core.settings import get_settings
        from asgard.monitoring.run import report_location

        # Both names are checked before they touch a path: no separator, no "..", no other file.
        if not re.match(MODEL_NAME_PATTERN, model_name) or not models_page.REPORT_NAME.match(report):
            raise HTTPException(404, detail="no such report")
        guard_model(who, model_name, reading=True)
        try:
            content = report_location(model_name, report, get_settings()).read_bytes()
        except OSError:  # missing (locally or on S3)
            raise HTTPException(404, detail=f"no report {report} for {model_name}") from None
        return HTMLResponse(content.decode(), media_type="text/html")


def serving_models(hook: Any) -> list[dict[str, Any]]:
    """Every registered model with the versions its targets actually serve (one listing per target)."""
    from asgard.core.settings import get_settings
    from asgard.deploy.serving_state import observe, targets_to_ask, with_serving_state
    from asgard.registry.models import describe_models, recorded_targets

    models, settings = describe_models(hook), get_settings()
    observation = observe(settings, targets=targets_to_ask(settings, recorded_targets(hook)))
    return [with_serving_state(model, observation) for model in models]


def serving_model(hook: Any, model_name: str) -> dict[str, Any]:
    """One model's versions, each with what its targets say of it (not only its ``deploy.status`` tag)."""
    from asgard.core.settings import get_settings
    from asgard.deploy.serving_state import observe, targets_recorded, targets_to_ask, with_serving_state
    from asgard.registry.models import describe_model

    model, settings = describe_model(hook, model_name), get_settings()
    targets = targets_to_ask(settings, targets_recorded(model["versions"]))
    return with_serving_state(model, observe(settings, targets=targets))


def _job_url(request: Request, job: dict[str, Any]) -> str:
    return str(request.url_for("job", job_id=job["job_id"]))


def add_error_handlers(app: FastAPI) -> None:
    """Named errors of the platform as HTTP answers: unknown → 404, refused input → 422."""

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, error: RequestValidationError) -> JSONResponse:
        return JSONResponse({"detail": refusal_detail(error.errors())}, status_code=422)

    @app.exception_handler(ModelNotFoundError)
    @app.exception_handler(jobs.JobNotFoundError)
    async def not_found(request: Request, error: Exception) -> JSONResponse:
        return JSONResponse({"detail": str(error)}, status_code=404)

    @app.exception_handler(InputError)
    async def refused(request: Request, error: InputError) -> JSONResponse:
        return JSONResponse({"detail": str(error)}, status_code=422)

    @app.exception_handler(TeamRefusal)
    async def not_your_team(request: Request, error: TeamRefusal) -> JSONResponse:
        return JSONResponse({"detail": str(error)}, status_code=403)

    @app.exception_handler(AirflowApiError)
    async def airflow_refused(request: Request, error: AirflowApiError) -> JSONResponse:
        # Params refusing a conf are a 400 from Airflow: to this API's callers, a bad body (422).
        code = {400: 422, 401: 401, 403: 403, 404: 404, 409: 409}.get(error.status or 0, 502)
        return JSONResponse({"detail": str(error)}, status_code=code)
