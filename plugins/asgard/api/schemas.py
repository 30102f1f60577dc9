"""Request and response bodies of the seed's API, as in its documents.

Requests that start a DAG run declare the seed's keys (for the OpenAPI docs and a 422 naming a
missing or mistyped field) and pass any other key through as conf: the DAG's Params are the one
full schema of each conf, and a value they refuse is a 422 naming the param too.

Numbers are finite everywhere: JSON parsing turns ``Infinity``, ``NaN`` and ``1e999`` into
non-finite floats, which no measurement, threshold or conf can mean (a conf would reach the DAG with
them as null). Declared floats are ``FiniteFloat``; free-form values (``FiniteJson``), extra conf
keys included, are searched for one, and either way it is a 422 naming the field.

Objects are bounded in keys before their values are looked at (``AtMost``): pydantic checks a dict's
``max_length`` only after validating every value, so an object of 60,000 bad values would cost 60,000
errors (a quarter of a second, and an answer the size of the body) before the one that matters.
"""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    FiniteFloat,
    GetCoreSchemaHandler,
    GetJsonSchemaHandler,
    model_validator,
)
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema, PydanticCustomError, core_schema

from asgard.core.param_schemas import MODEL_NAME_PATTERN
from asgard.monitoring.store import non_finite

ModelName = Field(pattern=MODEL_NAME_PATTERN, max_length=128, description="A registered model's name.")
# Bounds on what one request may carry (the body as a whole is capped too: asgard.api.security).
Name = Field(min_length=1, max_length=256)
# A refusal names the first problems of a body, each quoting what it refused in short: never the
# size of the body, whatever the body holds.
MAX_ERRORS_SHOWN = 20
MAX_QUOTED_CHARS = 200
# Keys a body may carry beyond the ones its model declares (conf keys for a DAG's Params).
MAX_EXTRA_KEYS = 100


def _too_many_keys(limit: int, count: int) -> PydanticCustomError:
    return PydanticCustomError(
        "too_long", "Object should have at most {max_length} keys, not {count}", {"max_length": limit, "count": count}
    )


@dataclass(frozen=True)
class AtMost:
    """An object's bound in keys (``Annotated[dict[...], AtMost(50)]``), checked before its values (see the
    module's docstring) and declared in the OpenAPI schema as ``maxProperties``."""

    keys: int

    def __get_pydantic_core_schema__(self, source: Any, handler: GetCoreSchemaHandler) -> CoreSchema:
        return core_schema.no_info_before_validator_function(self._check, handler(source))

    def __get_pydantic_json_schema__(self, schema: CoreSchema, handler: GetJsonSchemaHandler) -> JsonSchemaValue:
        return {**handler(schema), "maxProperties": self.keys}

    def _check(self, value: Any) -> Any:
        if isinstance(value, dict) and len(value) > self.keys:
            raise _too_many_keys(self.keys, len(value))
        return value


def _finite(value: Any) -> Any:
    if isinstance(value, dict | list):
        # The common case at C speed: the encoder refuses a non-finite number anywhere in a value that
        # came from JSON, so only a value holding one is walked in Python to say where it is.
        with contextlib.suppress(ValueError):
            json.dumps(value, allow_nan=False)
            return value
    for path, number in non_finite(value):
        where = f" (at {path})" if path else ""
        raise PydanticCustomError(
            "finite_number", "Input should be a finite number, not {number}{where}", {"number": number, "where": where}
        )
    return value


# Any JSON value without Infinity or NaN in it, however deep.
FiniteJson = Annotated[Any, AfterValidator(_finite)]
# Inline rows, a list of values per column (at most 50 columns).
Columns = Annotated[dict[str, list[Any]], AtMost(50), AfterValidator(_finite)]
StringTags = Annotated[dict[str, str], AtMost(50), Field(description="String tags (at most 50).")]


class ClosedModel(BaseModel):
    """A body of the keys it declares: an unknown key is a 422 naming it. Bounded in keys before anything in
    it is validated (see the module's docstring): its fields and ``undeclared_keys`` more, each named."""

    model_config = ConfigDict(extra="forbid")
    undeclared_keys: ClassVar[int] = 20

    @model_validator(mode="before")
    @classmethod
    def _bounded(cls, data: Any) -> Any:
        limit = len(cls.model_fields) + cls.undeclared_keys
        if isinstance(data, dict) and len(data) > limit:
            raise _too_many_keys(limit, len(data))
        return data


class OpenModel(ClosedModel):
    """A body that passes keys it does not declare through (to a DAG's Params), finite like the rest."""

    model_config = ConfigDict(extra="allow")
    undeclared_keys: ClassVar[int] = MAX_EXTRA_KEYS
    __pydantic_extra__: dict[str, FiniteJson] = Field(init=False)


class DagConf(OpenModel):
    """A conf for a DAG: the declared fields, plus any other key the DAG's Params accept."""

    def conf(self) -> dict[str, Any]:
        """What the caller sent (unsent optional keys keep the DAG's defaults)."""
        return self.model_dump(mode="json", exclude_unset=True)


class TrainingUpload(DagConf):
    script_name: str = Field(max_length=104, description="File name of the script, ending in .py.")
    script_content: str = Field(max_length=1_400_000, description="The script, base64-encoded (1 MB at most).")
    experiment_name: str = Name
    model_name: str = ModelName
    requirements: list[str] = Field(default_factory=list, max_length=100, description="pip requirements of the script.")
    timeout: int = Field(600, ge=1, description="Seconds before the script is stopped.")
    env_vars: Annotated[dict[str, str], AtMost(50)] = Field(
        default_factory=dict, description="Extra environment of the script."
    )


class DataSource(OpenModel):
    feature_views: list[str] = Field(max_length=20)
    entities: Columns | None = None
    target_column: str = Field(max_length=128)


class TrainModelRequest(DagConf):
    experiment_name: str = Name
    model_name: str = ModelName
    framework: Literal["sklearn", "xgboost", "lightgbm"]
    model_type: Literal["classification", "regression"]
    data_source: DataSource
    hyperparameters: Annotated[dict[str, FiniteJson], AtMost(10)] = Field(default_factory=dict)
    tags: StringTags = Field(default_factory=dict)
    retraining: Annotated[dict[str, FiniteJson], AtMost(10)] | None = Field(
        None,
        description="Retrain the champion when its feature views are materialized again: "
        '`{"on_new_features": true, "min_interval_hours": 24}`.',
    )


class BatchScoringRequest(DagConf):
    model_name: str = ModelName
    model_version: str | int | None = Field(None, description="A version number; else `alias` (default champion).")
    feature_views: list[str] | None = Field(None, max_length=20)
    entities_df: Columns | None = None
    output_path: str = Field(max_length=1024, description="Local path or s3:// URI of the Parquet output.")


class FeatureField(BaseModel):
    name: str = Field(max_length=128)
    dtype: str = Field(max_length=32)


class FeatureSource(OpenModel):
    table_name: str = Field(max_length=128)
    timestamp_field: str = Field(max_length=128)


class FeatureRegistration(DagConf):
    name: str = Field(max_length=128)
    entities: list[str] = Field(max_length=10)
    features: list[FeatureField] = Field(max_length=500)
    source: FeatureSource
    ttl_days: int = 365


class RegistryRequest(ClosedModel):
    model_name: str = ModelName
    run_id: str = Field(pattern="^[0-9a-f]{32}$", description="The MLflow run whose logged model is registered.")
    team: str | None = Field(
        None, pattern=r"^[A-Za-z0-9_-]{3,50}$", description="A new model's team (default: the caller's only team)."
    )
    description: str = Field("", max_length=5000)
    tags: StringTags = Field(default_factory=dict)


class MonitoringRecordRequest(ClosedModel):
    model_name: str = ModelName
    model_version: Annotated[str, Field(max_length=32)] | Annotated[int, Field(strict=True, ge=0, le=10**12)]
    # The store keeps 32 characters: a longer name is a 422 here, not a database error.
    metric_type: str = Field(min_length=1, max_length=32)
    metrics: Annotated[dict[str, FiniteFloat], AtMost(200)]
    reference_data: Annotated[dict[str, FiniteJson], AtMost(200)] | None = None
    current_data: Annotated[dict[str, FiniteJson], AtMost(200)] | None = None
    tags: StringTags = Field(default_factory=dict)
    thresholds: Annotated[dict[str, FiniteFloat], AtMost(50)] | None = Field(
        None, description="Overrides of the default alert thresholds."
    )


class MonitoringHistoryRequest(ClosedModel):
    model_name: str = ModelName
    model_version: str | int | None = None
    metric_type: str | None = None
    start_date: datetime | None = None
    end_date: datetime | None = None
    limit: int = Field(100, ge=1, le=10_000)


class MonitoringRunRequest(DagConf):
    """A ``monitor_model`` run now (the daily one covers every serving model)."""

    model_name: str | None = Field(None, pattern=MODEL_NAME_PATTERN, description="Default: every serving model.")
    model_version: str | int | None = None
    window_start: str | None = Field(None, description="ISO timestamp; default: a day before window_end.")
    window_end: str | None = Field(None, description="ISO timestamp; default: now.")


class JobSubmitted(BaseModel):
    job_id: str
    dag_id: str
    run_id: str
    status: str
    status_url: str
    model_name: str | None = None
    model_version: str | None = None
    output_path: str | None = None


def refusal_detail(errors: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """A 422's ``detail``: FastAPI's errors (type, loc, msg, input, ctx), the first ``MAX_ERRORS_SHOWN``
    of them, each part quoted in at most ``MAX_QUOTED_CHARS`` characters (an input, a key in ``loc``, a
    message naming a key), and a last entry saying how many more there were. A refused Infinity or NaN
    is quoted back as text: JSON has no such number, and FastAPI's encoder would fail on it (a 500
    instead of the 422)."""
    from fastapi.encoders import jsonable_encoder

    quoted = [_quoted_error(error) for error in errors[:MAX_ERRORS_SHOWN]]
    detail = jsonable_encoder(quoted, custom_encoder={float: _json_number})
    if len(errors) > MAX_ERRORS_SHOWN:
        more = len(errors) - MAX_ERRORS_SHOWN
        detail.append({"type": "more_errors", "loc": ["body"], "msg": f"{more} more errors not shown"})
    return detail


def _quoted_error(error: dict[str, Any]) -> dict[str, Any]:
    quoted = {**error, "loc": [_quoted(part) for part in error.get("loc", ())], "msg": _quoted(error.get("msg", ""))}
    if "input" in error:
        quoted["input"] = _quoted(error["input"])
    if isinstance(error.get("ctx"), dict):
        quoted["ctx"] = {str(key)[:MAX_QUOTED_CHARS]: _quoted(value) for key, value in error["ctx"].items()}
    return quoted


def _quoted(value: Any) -> Any:
    """``value`` as JSON can carry it, or the start of it as text when it is longer than
    ``MAX_QUOTED_CHARS``: a container is encoded lazily and only as far as that, so quoting it costs no
    more than the quote; bytes (a body that was not JSON) are decoded, anything else is its ``repr``."""
    if isinstance(value, bool | int | float) or value is None:
        return value
    if isinstance(value, bytes | bytearray):  # a body that was not JSON (at most the body limit)
        value = bytes(value).decode("utf-8", "replace")
    if isinstance(value, dict | list | tuple):
        text = ""
        for chunk in json.JSONEncoder(default=repr).iterencode(value):
            text += chunk
            if len(text) > MAX_QUOTED_CHARS:
                return f"{text[:MAX_QUOTED_CHARS]}…"
        return json.loads(text)  # what JSON holds of it: its keys as text, its numbers finite or quoted
    text = value if isinstance(value, str) else repr(value)
    return text if len(text) <= MAX_QUOTED_CHARS else f"{text[:MAX_QUOTED_CHARS]}… ({len(text)} characters)"


def _json_number(number: float) -> float | str:
    if math.isfinite(number):
        return number
    return "NaN" if math.isnan(number) else ("Infinity" if number > 0 else "-Infinity")
