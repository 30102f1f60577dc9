"""The serving app: ``/health``, ``/metadata``, ``/predict``, MLflow's ``/invocations`` and ``/metrics``.

The two prediction paths are answered on bare ASGI, in front of FastAPI: a 1-row request costs
about as much as the model itself, and FastAPI's request, routing and response objects would
cost more than both (``bench/serving_bench.py`` runs a bare FastAPI endpoint beside the image to
hold this). Bodies are parsed and answered as raw JSON bytes: the signature check is the
validation. Requests read in the same turn of the event loop are predicted in one call of the model
(``batching``). FastAPI serves everything else: health, metadata and the OpenAPI document, which
describes the prediction paths from the served model's signature (``openapi``).

Environment:
``ASGARD_MODEL_DIR``            the bundle (default ``/opt/asgard/model``)
``ASGARD_PREDICTION_LOG``       where batches of logged predictions go: a folder or ``s3://bucket/prefix``
                                (unset: no logging)
``ASGARD_PREDICTION_LOG_FLUSH_SECONDS``  how often the log is written (default 5)
``ASGARD_PREDICTION_LOG_MAX_BYTES``  the most the log holds between two writes (default 64 MB): requests
                                beyond it are not logged, and counted in ``/metrics``
``ASGARD_PREDICTION_LOG_MAX_VALUE_CHARS``  a request holding a longer string value is not logged, and
                                counted (default 1,000)
``ASGARD_SERVING_MAX_BODY_BYTES``  a larger request body is refused with 413 (default 20 MB), counted as
                                it arrives: a body without a Content-Length is cut off at the limit
``ASGARD_SERVING_MAX_ROWS``     a request with more rows is refused with 413 (default 100,000)
``ASGARD_SERVING_MAX_STRING_CHARS``  a longer string value is refused with 422 naming its column
                                (default 10,000)
``ASGARD_SERVING_INLINE_ROWS``  requests up to this many rows are predicted on the event loop (default
                                256); larger ones on a worker thread, so ``/health`` keeps answering
                                while a large batch is predicted
``ASGARD_ONLINE_STORE``         where ``{"entities": ...}`` requests read features: ``sqlite:///<path>`` or a
                                ``redis://`` URL (unset: only requests carrying their features)
``ASGARD_SERVING_MAX_ENTITIES`` a request naming more entity ids is refused with 422 (default 1,000)
``ASGARD_SERVING_EXPOSE_FEATURES``  ``true``: ``{"entities": ...}`` answers may carry the stored features
                                (``return_features``) and their times, and name ids the store does not
                                hold (422). ``false`` (the default, ``deploy_model``'s ``expose_features``):
                                neither, and every id gets the same answer shape (``feature_exposure``)
``ASGARD_SERVING_FEATURE_CACHE``  entities whose SQLite rows are remembered until the store's file changes
                                (default 50,000; 0: none)
``ASGARD_MIRROR_CONFIG``        a file that, while it exists, names a shadow to copy a share of the prediction
                                requests to (``mirror``; the Kubernetes target mounts it from a ConfigMap)
"""

from __future__ import annotations

import contextlib
import gc
import itertools
import json
import logging
import os
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from time import perf_counter
from typing import Any, NamedTuple

import anyio
from fastapi import FastAPI
from fastapi.responses import Response

from asgard_serving import feature_exposure
from asgard_serving.batching import TurnBatch
from asgard_serving.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from asgard_serving.metrics import ModelTime, RequestMetrics
from asgard_serving.mirror import Mirror
from asgard_serving.model import Bundle, InputError, NonFinite, Predictor, columns_of
from asgard_serving.online import FeatureRows, OnlineFeatures, StoreUnavailable

try:
    import orjson

    def _dumps(value: Any) -> bytes:
        return orjson.dumps(value, option=orjson.OPT_SERIALIZE_NUMPY)

    _loads = orjson.loads

    def _orjson_takes(value: Any) -> None:
        """Raise TypeError for what orjson refuses beside NaN and infinity (integers beyond 64 bits, lone
        surrogates), which Python's json module reads."""
        orjson.dumps(value, default=lambda literal: None if type(literal) is NonFinite else literal)

except ImportError:  # pragma: no cover - the image always has orjson

    def _dumps(value: Any) -> bytes:
        return json.dumps(value, default=lambda stamp: stamp.isoformat()).encode()

    def _loads(raw: bytes) -> Any:
        return json.loads(raw, parse_constant=NonFinite)

    def _orjson_takes(value: Any) -> None:
        pass


log = logging.getLogger("asgard_serving")

# An answer to a prediction request: its status and JSON body.
Reply = tuple[int, bytes]
ASGIApp = Callable[[dict, Callable[[], Awaitable[dict]], Callable[[dict], Awaitable[None]]], Awaitable[None]]


def _json(status: int, body: Any) -> Response:
    return Response(_dumps(body), status_code=status, media_type="application/json")


def _error(status: int, detail: str) -> Reply:
    return status, _dumps({"detail": detail})


class State:
    predictor: Predictor | None = None
    prediction_log: Any = None
    online: OnlineFeatures | None = None
    mirror: Mirror | None = None
    # Why this server cannot predict by entity id (None when it can).
    online_refusal: tuple[int, str] | None = (503, "model not loaded yet")
    # Whether answers by entity id may show what the online store holds (ASGARD_SERVING_EXPOSE_FEATURES).
    expose_features: bool = False


@dataclass(frozen=True)
class Limits:
    max_body_bytes: int = 20_000_000
    max_rows: int = 100_000
    max_string_chars: int = 10_000
    inline_rows: int = 256
    max_entities: int = 1000
    feature_cache: int = 50_000
    # The prediction log: what it holds between two writes, and the longest string value it writes.
    log_max_bytes: int = 64_000_000
    log_max_value_chars: int = 1000

    @classmethod
    def from_env(cls) -> Limits:
        return cls(
            max_body_bytes=int(os.environ.get("ASGARD_SERVING_MAX_BODY_BYTES", cls.max_body_bytes)),
            max_rows=int(os.environ.get("ASGARD_SERVING_MAX_ROWS", cls.max_rows)),
            max_string_chars=int(os.environ.get("ASGARD_SERVING_MAX_STRING_CHARS", cls.max_string_chars)),
            inline_rows=int(os.environ.get("ASGARD_SERVING_INLINE_ROWS", cls.inline_rows)),
            max_entities=int(os.environ.get("ASGARD_SERVING_MAX_ENTITIES", cls.max_entities)),
            feature_cache=int(os.environ.get("ASGARD_SERVING_FEATURE_CACHE", cls.feature_cache)),
            log_max_bytes=int(os.environ.get("ASGARD_PREDICTION_LOG_MAX_BYTES", cls.log_max_bytes)),
            log_max_value_chars=int(os.environ.get("ASGARD_PREDICTION_LOG_MAX_VALUE_CHARS", cls.log_max_value_chars)),
        )


def create_app(model_dir: str | None = None, limits: Limits | None = None) -> ASGIApp:
    state = State()
    limits = limits or Limits.from_env()
    bundle_dir = model_dir or os.environ.get("ASGARD_MODEL_DIR", "/opt/asgard/model")

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI):
        bundle = Bundle.read(bundle_dir)
        state.predictor = Predictor(bundle, max_string_chars=limits.max_string_chars)
        state.expose_features = feature_exposure.exposed(os.environ.get(feature_exposure.ENVIRONMENT))
        state.online, state.online_refusal = _online_features(state.predictor, limits, state.expose_features)
        log_destination = os.environ.get("ASGARD_PREDICTION_LOG")
        if log_destination:
            from asgard_serving.prediction_log import PredictionLog

            state.prediction_log = PredictionLog(
                log_destination,
                model={"model_name": bundle.info["model_name"], "model_version": bundle.info["version"]},
                flush_seconds=float(os.environ.get("ASGARD_PREDICTION_LOG_FLUSH_SECONDS", "5")),
                max_queued_bytes=limits.log_max_bytes,
                max_value_chars=limits.log_max_value_chars,
                string_columns=state.predictor.strings,
            )
        if os.environ.get("ASGARD_MIRROR_CONFIG"):
            state.mirror = Mirror(os.environ["ASGARD_MIRROR_CONFIG"])
        # What is loaded now lives as long as the server: out of the collector's way, so collections
        # (which requests' short-lived objects set off) walk only those.
        gc.freeze()
        yield
        if state.prediction_log is not None:
            state.prediction_log.close()
        if state.mirror is not None:
            await state.mirror.close()
        if state.online is not None:
            await state.online.close()

    api = FastAPI(title="Asgard model server", lifespan=lifespan, docs_url=None, redoc_url=None)
    generated_openapi = api.openapi

    def openapi() -> dict[str, Any]:
        """FastAPI's document, plus the prediction paths as the model being served takes them."""
        if api.openapi_schema is None:
            from asgard_serving.openapi import prediction_paths

            document = generated_openapi()
            bundle = state.predictor.bundle if state.predictor else Bundle.read(bundle_dir)
            join_keys = (bundle.info.get("online_features") or {}).get("join_keys")
            exposed = feature_exposure.exposed(os.environ.get(feature_exposure.ENVIRONMENT))
            document["paths"].update(prediction_paths(bundle.columns, join_keys, features_exposed=exposed))
        return api.openapi_schema

    api.openapi = openapi

    @api.get("/health")
    async def health() -> Response:
        if state.predictor is None:
            return _json(503, {"status": "loading"})
        return _json(200, {"status": "ok", "model_loaded": True})

    @api.get("/ping")
    async def ping() -> Response:  # MLflow's scoring server health path
        return await health()

    @api.get("/metadata")
    async def metadata() -> Response:
        if state.predictor is None:
            return _json(503, {"detail": "model not loaded yet"})
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

    metrics, model_time = RequestMetrics(), ModelTime()

    @api.get("/metrics", include_in_schema=False)
    async def prometheus_metrics() -> Response:
        lines = metrics.lines() + model_time.lines()
        for part in (state.prediction_log, state.mirror):
            if part is not None:
                lines += part.lines()
        return Response(("\n".join(lines) + "\n").encode(), media_type=METRICS_CONTENT_TYPE)

    return PredictionPaths(Predictions(state, limits, model_time), api, metrics)


def _online_features(
    predictor: Predictor, limits: Limits, expose_features: bool
) -> tuple[OnlineFeatures | None, tuple[int, str] | None]:
    """The version's online-store reader, or why entity requests are refused (status, reason)."""
    bundle = predictor.bundle
    spec = bundle.info.get("online_features")
    if not spec:
        reason = bundle.info.get("online_features_reason") or "it was not trained on Feast feature views"
        return None, (422, f"this model version cannot predict by entity id: {reason}")
    if not expose_features:
        refusal = feature_exposure.featureless_refusal(predictor)
        if refusal is not None:
            return None, refusal
    location = os.environ.get("ASGARD_ONLINE_STORE")
    if not location:
        return None, (503, "this server has no online store to read features from (ASGARD_ONLINE_STORE)")
    reader = OnlineFeatures(spec, location, max_entities=limits.max_entities, cache_entities=limits.feature_cache)
    return reader, None


ENTITY_FIELDS = frozenset({"entities", "return_probabilities", "return_features"})
STR_TYPE, LIST_TYPE = frozenset({str}), {list}


class EntityAsk(NamedTuple):
    """A prediction request by entity id that passed its checks: the features are read, then predicted."""

    entities: list[dict[str, Any]]
    ids: dict[str, list]
    probabilities: bool
    features: bool


class Ask(NamedTuple):
    """A prediction request that passed its checks: what to predict and how to answer."""

    columns: dict[str, list]
    rows: int
    probabilities: bool
    mlflow_shape: bool


class Predictions:
    """The two prediction paths: a parsed body in, an :class:`Ask` (or a refusal) out; an Ask answered."""

    def __init__(self, state: State, limits: Limits, model_time: ModelTime) -> None:
        self.state = state
        self.limits = limits
        self.model_time = model_time
        # Request ids: this worker's random prefix and a counter, as unique as a uuid4 per request
        # without a system call for each.
        self._worker = uuid.uuid4().hex[:16]
        self._requests = itertools.count()

    def predict(self, body: Any) -> Ask | EntityAsk | Reply:
        if isinstance(body, list):  # a bare list of records
            return self._ask(body, False)
        if isinstance(body, dict) and "entities" in body:
            return self._entity_ask(body)
        if not isinstance(body, dict) or "inputs" not in body:
            return _error(422, 'body must be {"inputs": ..., "return_probabilities": bool} or a list of records')
        probabilities = body.get("return_probabilities", False)
        if not isinstance(probabilities, bool):
            return _error(422, "return_probabilities must be true or false")
        if len(body) > 2 or (len(body) == 2 and "return_probabilities" not in body):
            unknown = sorted(set(body) - {"inputs", "return_probabilities"})
            return _error(422, f"unexpected field(s) in the body: {', '.join(unknown)}")
        return self._ask(body["inputs"], probabilities)

    def invocations(self, body: Any) -> Ask | Reply:
        """MLflow's scoring protocol, so MLflow clients (``mlflow models predict``, SDKs) work unchanged."""
        if not isinstance(body, dict):
            return _error(422, "body must be an object with dataframe_split, dataframe_records, inputs or instances")
        if "dataframe_split" in body:
            split = body["dataframe_split"]
            if not isinstance(split, dict) or "columns" not in split or "data" not in split:
                return _error(422, "dataframe_split needs columns and data")
            names, data = split["columns"], split["data"]
            # Each check is one pass in C (set, map) rather than a Python loop over names or rows.
            if type(names) is not list or not set(map(type, names)) <= STR_TYPE:
                return _error(422, "dataframe_split.columns must be a list of column names")
            if len(set(names)) != len(names):
                return _error(422, "dataframe_split.columns names a column twice")
            if type(data) is not list or not data:
                return _error(422, "dataframe_split.data holds no rows")
            if len(data) > self.limits.max_rows:
                return self._too_many_rows(len(data))
            width = len(names)
            if set(map(type, data)) != LIST_TYPE or set(map(len, data)) != {width}:
                return _error(422, f"every row of dataframe_split.data needs {width} values")
            # Rows to columns in one transposition rather than a dict per row; already columns.
            columns = dict(zip(names, map(list, zip(*data, strict=True)), strict=True))
            return self._checked(columns, False, mlflow_shape=True)
        elif "dataframe_records" in body:
            payload = body["dataframe_records"]
        elif "inputs" in body:
            payload = body["inputs"]
        elif "instances" in body:
            payload = body["instances"]
        else:
            return _error(422, "body must hold one of dataframe_split, dataframe_records, inputs, instances")
        return self._ask(payload, False, mlflow_shape=True)

    def _ask(self, columns_payload: Any, probabilities: bool, *, mlflow_shape: bool = False) -> Ask | Reply:
        predictor = self.state.predictor
        if predictor is None:
            return _error(503, "model not loaded yet")
        if type(columns_payload) is list and len(columns_payload) > self.limits.max_rows:  # before any record
            return self._too_many_rows(len(columns_payload))
        try:
            columns = columns_of(columns_payload, predictor.signature)
        except InputError as error:
            return _error(422, str(error))
        return self._checked(columns, probabilities, mlflow_shape=mlflow_shape)

    def _too_many_rows(self, rows: int) -> Reply:
        return _error(413, f"{rows} rows in one request; at most {self.limits.max_rows} (ASGARD_SERVING_MAX_ROWS)")

    def _checked(self, columns: dict[str, list], probabilities: bool, *, mlflow_shape: bool) -> Ask | Reply:
        predictor = self.state.predictor
        if predictor is None:
            return _error(503, "model not loaded yet")
        try:
            rows = predictor.signature.check(columns)
        except InputError as error:
            return _error(422, str(error))
        if rows > self.limits.max_rows:
            return self._too_many_rows(rows)
        return Ask(columns, rows, probabilities, mlflow_shape)

    def _entity_ask(self, body: dict) -> EntityAsk | Reply:
        if not ENTITY_FIELDS.issuperset(body):
            unknown = sorted(set(body) - ENTITY_FIELDS)
            return _error(422, f"unexpected field(s) beside entities: {', '.join(unknown)}")
        flags = {name: body.get(name, False) for name in ("return_probabilities", "return_features")}
        wrong = [name for name, value in flags.items() if type(value) is not bool]
        if wrong:
            return _error(422, f"{wrong[0]} must be true or false")
        if flags["return_features"] and not self.state.expose_features:
            return _error(*feature_exposure.RETURN_FEATURES_REFUSAL)
        online = self.state.online
        if online is None:
            return _error(*self.state.online_refusal)
        try:
            entities, ids = online.entity_values(body["entities"])
        except InputError as error:
            return _error(422, str(error))
        return EntityAsk(entities, ids, flags["return_probabilities"], flags["return_features"])

    async def answer_entities(self, ask: EntityAsk) -> Reply:
        """Read the entities' features from the online store, then predict and answer. The store decides
        where its read runs (see ``asgard_serving.online``); the prediction follows ``inline_rows`` as
        requests carrying their features do."""
        online, signature = self.state.online, self.state.predictor.signature
        try:
            found = await online.read(ask.entities, [column.name for column in signature.columns])
        except StoreUnavailable as error:
            return _error(503, str(error))
        if not self.state.expose_features:
            return await self._answer_entities_privately(ask, found)
        if found.missing:
            missing = {name: [ids[row] for row in found.missing] for name, ids in ask.ids.items()}
            named = "; ".join(f"{name} {', '.join(map(str, values[:20]))}" for name, values in missing.items())
            more = f" and {len(found.missing) - 20} more" if len(found.missing) > 20 else ""
            views = ", ".join(view["name"] for view in online.views)
            detail = f"no features in the online store ({views}) for {named}{more}: not materialized yet, or expired"
            return 422, _dumps({"detail": detail, "missing": missing})
        try:  # the stored values against the signature, as a request's own would be
            rows = signature.check(found.columns)
        except InputError as error:
            return _error(422, f"the online store's features do not fit the model: {error}")
        status, result = await self._predicted_read(found, rows, ask.probabilities)
        if status != 200:
            return status, _dumps(result)
        result["entities"] = ask.ids
        result["feature_timestamps"] = found.timestamps  # orjson writes datetimes as RFC 3339, in C
        if ask.features:
            result["features"] = found.columns
        return 200, _dumps(result)

    async def _answer_entities_privately(self, ask: EntityAsk, found: FeatureRows) -> Reply:
        """The answer by entity id when the deployment does not expose features: every id answered alike.

        An id the store does not hold is predicted from its features as the store reads them (all None,
        as ``get_online_features`` answers for it; the start-up check made sure this model takes such a
        row), and no answer carries what only a held id has: its features, their times, a 422 naming it,
        or a refusal quoting a stored value. What the store holds that does not fit the model is the
        server's problem: a 500 that names no id or value (the server's log has the details)."""
        signature = self.state.predictor.signature
        try:
            rows = signature.check(found.columns)
        except InputError as error:
            log.error("the online store's features do not fit the model: %s", error)
            return _error(500, feature_exposure.STORED_FEATURES_FAILED)
        status, result = await self._predicted_read(found, rows, ask.probabilities)
        if status != 200:
            log.error("by entity id, the model answered %d: %s", status, result.get("detail"))
            return _error(500, feature_exposure.STORED_FEATURES_FAILED)
        result["entities"] = ask.ids
        return 200, _dumps(result)

    async def _predicted_read(self, found: FeatureRows, rows: int, probabilities: bool) -> tuple[int, dict[str, Any]]:
        """The prediction of features read by id, following ``inline_rows`` as requests carrying theirs do."""
        features = Ask(found.columns, rows, probabilities, False)
        if rows <= self.limits.inline_rows:
            return self._predicted(features)
        return await anyio.to_thread.run_sync(self._predicted, features)

    def answer(self, ask: Ask) -> Reply:
        """Predict, log and answer (on the event loop for small asks, on a worker thread for large ones)."""
        status, result = self._predicted(ask)
        return status, _dumps(result)

    def answer_together(self, asks: list[Ask]) -> list[Reply]:
        """Asks read together (``batching``), predicted in one call of an ONNX model (its graph works row
        by row: a row's answer is the same in any batch) and answered each as if alone. When that call
        fails, each ask is predicted alone, so that only the one at fault gets the refusal."""
        predictor = self.state.predictor
        if len(asks) == 1 or predictor.flavor != "onnx":  # a native model may not work row by row
            return [self.answer(ask) for ask in asks]
        chain = itertools.chain.from_iterable
        names = dict.fromkeys(chain(ask.columns for ask in asks))  # an optional column some asks leave out
        columns = {name: list(chain(ask.columns.get(name) or [None] * ask.rows for ask in asks)) for name in names}
        rows = sum(ask.rows for ask in asks)
        try:
            started = perf_counter()
            result = predictor.predict(columns, rows, probabilities=any(ask.probabilities for ask in asks))
            self.model_time.observe(perf_counter() - started, len(asks))
        except Exception:
            return [self.answer(ask) for ask in asks]
        replies, end = [], 0
        for ask in asks:
            start, end = end, end + ask.rows
            part = {"predictions": result["predictions"][start:end]}
            if ask.probabilities and "probabilities" in result:
                part.update(probabilities=result["probabilities"][start:end], classes=result["classes"])
            status, body = self._answered(ask, part)
            replies.append((status, _dumps(body)))
        return replies

    def _predicted(self, ask: Ask) -> tuple[int, dict[str, Any]]:
        """The prediction of a checked ask, logged: the answer's status and body (not yet serialized)."""
        predictor = self.state.predictor
        try:
            started = perf_counter()
            result = predictor.predict(ask.columns, ask.rows, probabilities=ask.probabilities)
            self.model_time.observe(perf_counter() - started)
        except InputError as error:  # a value the model's own input types cannot hold
            return 422, {"detail": str(error)}
        except Exception as error:  # the model itself failed: the caller's request was valid
            log.exception("the model failed on a request of %d row(s)", ask.rows)
            return 500, {"detail": f"the model failed on this request: {type(error).__name__}: {str(error)[:300]}"}
        return self._answered(ask, result)

    def _answered(self, ask: Ask, result: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        """A predicted ask's answer, logged."""
        # One id per request, one suffix per row (``<request_id>-<row>``): unique, and cheap for large
        # requests; the MLflow shape answers no ids, so it never spells them out.
        request_id = f"{self._worker}{next(self._requests):016x}"
        if self.state.prediction_log is not None:
            self.state.prediction_log.record(request_id, ask.columns, result)
        if ask.mlflow_shape:
            return 200, {"predictions": result["predictions"]}
        info = self.state.predictor.bundle.info
        ids = [f"{request_id}-{row}" for row in range(ask.rows)]
        result.update(prediction_ids=ids, model_name=info["model_name"], model_version=info["version"])
        return 200, result


JSON_HEADERS = [(b"content-type", b"application/json")]


def _loads_non_finite(raw: bytes, error: ValueError) -> Any:
    """A body orjson refused, read again when what it refused may be a ``NaN`` or ``±Infinity`` literal
    or a number beyond a double (``1e400``): the literals become :class:`NonFinite` values and such a
    number infinity, which the column checks refuse with a 422 naming the column. Anything else that
    is not JSON stays refused (``error``). Only refused bodies pay for this second reading (Python's
    json module, about five times orjson's time: 0.5 s for a 20 MB body)."""
    if b"NaN" not in raw and b"Infinity" not in raw and "infinity" not in str(error):
        raise error
    try:
        body = json.loads(raw, parse_constant=NonFinite)
        _orjson_takes(body)
    except (ValueError, TypeError, RecursionError):
        raise error from None
    return body


class PredictionPaths:
    """ASGI in front of ``api``: a POST to one of ``paths`` goes to its handler, all else to ``api``."""

    def __init__(self, predictions: Predictions, api: FastAPI, metrics: RequestMetrics) -> None:
        self.paths = {"/predict": predictions.predict, "/invocations": predictions.invocations}
        self.predictions = predictions
        self.batch = TurnBatch(predictions.answer_together, max_rows=predictions.limits.inline_rows)
        self.api = api
        self.limits = predictions.limits
        self.metrics = metrics
        limit = self.limits.max_body_bytes
        self.too_large = _error(413, f"the body is larger than {limit} bytes (ASGARD_SERVING_MAX_BODY_BYTES)")

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        handler = self.paths.get(scope["path"]) if scope["type"] == "http" and scope["method"] == "POST" else None
        if handler is None:
            await self.api(scope, receive, send)
            return
        started = perf_counter()
        raw = await self._body(scope, receive)
        if raw is None:  # the client went away
            return
        if isinstance(raw, tuple):
            status, answer = raw
        else:
            try:
                try:
                    body = _loads(raw)
                except ValueError as error:
                    body = _loads_non_finite(raw, error)
            except ValueError as error:
                status, answer = _error(400, f"body is not valid JSON: {error}")
            else:
                ask = handler(body)
                if type(ask) is EntityAsk:
                    status, answer = await self.predictions.answer_entities(ask)
                elif type(ask) is not Ask:  # a refusal: (status, body)
                    status, answer = ask
                elif ask.rows <= self.limits.inline_rows:  # cheaper than a thread hop, and well under a millisecond
                    status, answer = await self.batch.answer(ask)  # with the asks read in the same turn
                else:  # off the event loop, so /health keeps answering while a large batch is predicted
                    status, answer = await anyio.to_thread.run_sync(self.predictions.answer, ask)
        spent = perf_counter() - started
        # Server-Timing (W3C): what the answer cost the server, read by clients and the edge tests alike.
        timing = (b"server-timing", b"app;dur=%.3f" % (spent * 1000))
        headers = [*JSON_HEADERS, (b"content-length", str(len(answer)).encode()), timing]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": answer})
        self.metrics.observe(status, spent)
        mirror = self.predictions.state.mirror
        if mirror is not None and type(raw) is bytes:
            mirror.offer(scope["path"], raw, status, answer)

    async def _body(self, scope: dict, receive: Callable) -> bytes | Reply | None:
        """The request body; a 413 past the limit, declared or counted as it arrives (a body without a
        length); None when the client disconnects first."""
        limit, too_large = self.limits.max_body_bytes, self.too_large
        for name, value in scope["headers"]:
            if name == b"content-length" and (not value.isdigit() or int(value) > limit):
                return too_large
        message = await receive()
        if message["type"] != "http.request":
            return None
        raw = message.get("body", b"")
        if not message.get("more_body"):
            return too_large if len(raw) > limit else raw
        received = bytearray(raw)
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return None
            received += message.get("body", b"")
            if len(received) > limit:
                return too_large
            if not message.get("more_body"):
                return bytes(received)
