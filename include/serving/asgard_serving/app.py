"""The serving app: ``/health``, ``/metadata``, ``/predict`` and MLflow's ``/invocations``.

Bodies are parsed and answered as raw JSON bytes rather than through pydantic models: the
signature check below is the validation, and skipping a second one keeps a 1-row request cheap.

Environment:
``ASGARD_MODEL_DIR``            the bundle (default ``/opt/asgard/model``)
``ASGARD_PREDICTION_LOG``       where batches of logged predictions go: a folder or ``s3://bucket/prefix``
                                (unset: no logging)
``ASGARD_PREDICTION_LOG_FLUSH_SECONDS``  how often the log is written (default 5)
"""

from __future__ import annotations

import contextlib
import os
import uuid
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import Response

from asgard_serving.model import Bundle, InputError, Predictor, check_columns, columns_of

try:
    import orjson

    def _dumps(value: Any) -> bytes:
        return orjson.dumps(value, option=orjson.OPT_SERIALIZE_NUMPY)

    _loads = orjson.loads
except ImportError:  # pragma: no cover - the image always has orjson
    import json

    def _dumps(value: Any) -> bytes:
        return json.dumps(value).encode()

    _loads = json.loads


def _json(status: int, body: Any) -> Response:
    return Response(_dumps(body), status_code=status, media_type="application/json")


def _error(status: int, detail: str) -> Response:
    return _json(status, {"detail": detail})


class State:
    predictor: Predictor | None = None
    prediction_log: Any = None


def create_app(model_dir: str | None = None) -> FastAPI:
    state = State()
    bundle_dir = model_dir or os.environ.get("ASGARD_MODEL_DIR", "/opt/asgard/model")

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI):
        bundle = Bundle.read(bundle_dir)
        state.predictor = Predictor(bundle)
        log_destination = os.environ.get("ASGARD_PREDICTION_LOG")
        if log_destination:
            from asgard_serving.prediction_log import PredictionLog

            state.prediction_log = PredictionLog(
                log_destination,
                model={"model_name": bundle.info["model_name"], "model_version": bundle.info["version"]},
                flush_seconds=float(os.environ.get("ASGARD_PREDICTION_LOG_FLUSH_SECONDS", "5")),
            )
        yield
        if state.prediction_log is not None:
            state.prediction_log.close()

    app = FastAPI(title="Asgard model server", lifespan=lifespan, docs_url=None, redoc_url=None)

    @app.get("/health")
    async def health() -> Response:
        if state.predictor is None:
            return _json(503, {"status": "loading"})
        return _json(200, {"status": "ok", "model_loaded": True})

    @app.get("/metadata")
    async def metadata() -> Response:
        if state.predictor is None:
            return _error(503, "model not loaded yet")
        info = state.predictor.bundle.info
        return _json(
            200,
            {
                "model_name": info["model_name"],
                "model_version": info["version"],
                "run_id": info["run_id"],
                "model_type": info["model_type"],
                "classes": info.get("classes"),
                "signature": info["signature"],
                "flavor": info["flavor"],
                "flavor_reason": info.get("flavor_reason"),
                "labels": info.get("labels", {}),
            },
        )

    async def _answer(columns_payload: Any, probabilities: bool, *, mlflow_shape: bool = False) -> Response:
        predictor = state.predictor
        if predictor is None:
            return _error(503, "model not loaded yet")
        try:
            columns = columns_of(columns_payload)
            rows = check_columns(columns, predictor.bundle.columns)
        except InputError as error:
            return _error(422, str(error))
        result = predictor.predict(columns, rows, probabilities=probabilities)
        # One random id per request, one suffix per row: unique, and cheap for large requests.
        request_id = uuid.uuid4().hex
        ids = [f"{request_id}-{row}" for row in range(rows)]
        if state.prediction_log is not None:
            state.prediction_log.record(ids, columns, result)
        if mlflow_shape:
            return _json(200, {"predictions": result["predictions"]})
        info = predictor.bundle.info
        return _json(
            200,
            {**result, "prediction_ids": ids, "model_name": info["model_name"], "model_version": info["version"]},
        )

    @app.post("/predict")
    async def predict(request: Request) -> Response:
        body = await _body(request)
        if isinstance(body, Response):
            return body
        if isinstance(body, list):  # a bare list of records
            return await _answer(body, False)
        if not isinstance(body, dict) or "inputs" not in body:
            return _error(422, 'body must be {"inputs": ..., "return_probabilities": bool} or a list of records')
        probabilities = body.get("return_probabilities", False)
        if not isinstance(probabilities, bool):
            return _error(422, "return_probabilities must be true or false")
        unknown = sorted(set(body) - {"inputs", "return_probabilities"})
        if unknown:
            return _error(422, f"unexpected field(s) in the body: {', '.join(unknown)}")
        return await _answer(body["inputs"], probabilities)

    @app.post("/invocations")
    async def invocations(request: Request) -> Response:
        """MLflow's scoring protocol, so MLflow clients (``mlflow models predict``, SDKs) work unchanged."""
        body = await _body(request)
        if isinstance(body, Response):
            return body
        if not isinstance(body, dict):
            return _error(422, "body must be an object with dataframe_split, dataframe_records, inputs or instances")
        if "dataframe_split" in body:
            split = body["dataframe_split"]
            if not isinstance(split, dict) or "columns" not in split or "data" not in split:
                return _error(422, "dataframe_split needs columns and data")
            if not isinstance(split["data"], list) or not split["data"]:
                return _error(422, "dataframe_split.data holds no rows")
            if not all(isinstance(row, list) and len(row) == len(split["columns"]) for row in split["data"]):
                return _error(422, f"every row of dataframe_split.data needs {len(split['columns'])} values")
            # Rows to columns in one transposition rather than a dict per row.
            columns = zip(*split["data"], strict=True)
            payload = {name: list(values) for name, values in zip(split["columns"], columns, strict=True)}
        elif "dataframe_records" in body:
            payload = body["dataframe_records"]
        elif "inputs" in body:
            payload = body["inputs"]
        elif "instances" in body:
            payload = body["instances"]
        else:
            return _error(422, "body must hold one of dataframe_split, dataframe_records, inputs, instances")
        return await _answer(payload, False, mlflow_shape=True)

    @app.get("/ping")
    async def ping() -> Response:  # MLflow's scoring server health path
        return await health()

    return app


async def _body(request: Request) -> Any:
    raw = await request.body()
    try:
        return _loads(raw)
    except ValueError as error:
        return _error(400, f"body is not valid JSON: {error}")
