"""The serving app: ``/health``, ``/metadata``, ``/predict`` and MLflow's ``/invocations``.

Bodies are parsed and answered as raw JSON bytes rather than through pydantic models: the
signature check below is the validation, and skipping a second one keeps a 1-row request cheap.

Environment:
``ASGARD_MODEL_DIR``            the bundle (default ``/opt/asgard/model``)
``ASGARD_PREDICTION_LOG``       where batches of logged predictions go: a folder or ``s3://bucket/prefix``
                                (unset: no logging)
``ASGARD_PREDICTION_LOG_FLUSH_SECONDS``  how often the log is written (default 5)
``ASGARD_SERVING_MAX_BODY_BYTES``  a larger request body is refused with 413 (default 20 MB)
``ASGARD_SERVING_MAX_ROWS``     a request with more rows is refused with 413 (default 100,000)
``ASGARD_SERVING_INLINE_ROWS``  requests up to this many rows are predicted on the event loop (default
                                256); larger ones on a worker thread, so ``/health`` keeps answering
                                while a large batch is predicted
"""

from __future__ import annotations

import contextlib
import os
import uuid
from dataclasses import dataclass
from typing import Any

import anyio
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


@dataclass(frozen=True)
class Limits:
    max_body_bytes: int = 20_000_000
    max_rows: int = 100_000
    inline_rows: int = 256

    @classmethod
    def from_env(cls) -> Limits:
        return cls(
            max_body_bytes=int(os.environ.get("ASGARD_SERVING_MAX_BODY_BYTES", cls.max_body_bytes)),
            max_rows=int(os.environ.get("ASGARD_SERVING_MAX_ROWS", cls.max_rows)),
            inline_rows=int(os.environ.get("ASGARD_SERVING_INLINE_ROWS", cls.inline_rows)),
        )


def create_app(model_dir: str | None = None, limits: Limits | None = None) -> FastAPI:
    state = State()
    limits = limits or Limits.from_env()
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
    generated_openapi = app.openapi

    def openapi() -> dict[str, Any]:
        """FastAPI's document, plus the request bodies of the model being served."""
        if app.openapi_schema is None:
            from asgard_serving.openapi import request_bodies

            document = generated_openapi()
            columns = state.predictor.bundle.columns if state.predictor else Bundle.read(bundle_dir).columns
            for path, body in request_bodies(columns).items():
                document["paths"][path]["post"]["requestBody"] = body
        return app.openapi_schema

    app.openapi = openapi

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
        if rows > limits.max_rows:
            return _error(413, f"{rows} rows in one request; at most {limits.max_rows} (ASGARD_SERVING_MAX_ROWS)")
        try:
            if rows <= limits.inline_rows:  # cheaper than a thread hop, and done in well under a millisecond
                result = predictor.predict(columns, rows, probabilities=probabilities)
            else:
                result = await anyio.to_thread.run_sync(
                    lambda: predictor.predict(columns, rows, probabilities=probabilities)
                )
        except InputError as error:  # a value the model's own input types cannot hold
            return _error(422, str(error))
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
        body = await _body(request, limits.max_body_bytes)
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
        body = await _body(request, limits.max_body_bytes)
        if isinstance(body, Response):
            return body
        if not isinstance(body, dict):
            return _error(422, "body must be an object with dataframe_split, dataframe_records, inputs or instances")
        if "dataframe_split" in body:
            split = body["dataframe_split"]
            if not isinstance(split, dict) or "columns" not in split or "data" not in split:
                return _error(422, "dataframe_split needs columns and data")
            names = split["columns"]
            if not isinstance(names, list) or not all(isinstance(name, str) for name in names):
                return _error(422, "dataframe_split.columns must be a list of column names")
            if len(set(names)) != len(names):
                return _error(422, "dataframe_split.columns names a column twice")
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


async def _body(request: Request, max_bytes: int) -> Any:
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > max_bytes):
        return _error(413, f"the body is larger than {max_bytes} bytes (ASGARD_SERVING_MAX_BODY_BYTES)")
    raw = bytearray()
    async for chunk in request.stream():  # a body without a length is counted as it arrives
        raw += chunk
        if len(raw) > max_bytes:
            return _error(413, f"the body is larger than {max_bytes} bytes (ASGARD_SERVING_MAX_BODY_BYTES)")
    try:
        return _loads(raw)
    except ValueError as error:
        return _error(400, f"body is not valid JSON: {error}")
