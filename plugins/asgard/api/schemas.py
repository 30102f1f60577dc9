"""Request and response bodies of the seed's API, as in its documents.

Requests that start a DAG run declare the seed's keys (for the OpenAPI docs and a 422 naming a
missing or mistyped field) and pass any other key through as conf: the DAG's Params are the one
full schema of each conf, and a value they refuse is a 422 naming the param too.

Numbers are finite everywhere: JSON parsing turns ``Infinity``, ``NaN`` and ``1e999`` into
non-finite floats, which no measurement, threshold or conf can mean (a conf would reach the DAG with
them as null). Declared floats are ``FiniteFloat``; free-form values (``FiniteJson``), extra conf
keys included, are searched for one, and either way it is a 422 naming the field.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, FiniteFloat
from pydantic_core import PydanticCustomError

from asgard.core.param_schemas import MODEL_NAME_PATTERN
from asgard.monitoring.store import non_finite

ModelName = Field(pattern=MODEL_NAME_PATTERN, max_length=128, description="A registered model's name.")
# Bounds on what one request may carry (the body as a whole is capped too: asgard.api.security).
Name = Field(min_length=1, max_length=256)
Tags = Field(default_factory=dict, max_length=50, description="String tags (at most 50).")


def _finite(value: Any) -> Any:
    for path, number in non_finite(value):
        where = f" (at {path})" if path else ""
        raise PydanticCustomError(
            "finite_number", "Input should be a finite number, not {number}{where}", {"number": number, "where": where}
        )
    return value


# Any JSON value without Infinity or NaN in it, however deep.
FiniteJson = Annotated[Any, AfterValidator(_finite)]
# Inline rows, a list of values per column.
Columns = Annotated[dict[str, list[Any]], AfterValidator(_finite)]


class OpenModel(BaseModel):
    """A body that passes keys it does not declare through (to a DAG's Params), finite like the rest."""

    model_config = ConfigDict(extra="allow")
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
    env_vars: dict[str, str] = Field(
        default_factory=dict, max_length=50, description="Extra environment of the script."
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
    hyperparameters: dict[str, FiniteJson] = Field(default_factory=dict, max_length=10)
    tags: dict[str, str] = Tags
    retraining: dict[str, FiniteJson] | None = Field(
        None,
        description="Retrain the champion when its feature views are materialized again: "
        '`{"on_new_features": true, "min_interval_hours": 24}`.',
    )


class BatchScoringRequest(DagConf):
    model_name: str = ModelName
    model_version: str | int | None = Field(None, description="A version number; else `alias` (default champion).")
    feature_views: list[str] | None = Field(None, max_length=20)
    entities_df: Columns | None = Field(None, max_length=50)
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


class RegistryRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model_name: str = ModelName
    run_id: str = Field(pattern="^[0-9a-f]{32}$", description="The MLflow run whose logged model is registered.")
    team: str | None = Field(
        None, pattern=r"^[A-Za-z0-9_-]{3,50}$", description="A new model's team (default: the caller's only team)."
    )
    description: str = Field("", max_length=5000)
    tags: dict[str, str] = Tags


class MonitoringRecordRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model_name: str = ModelName
    model_version: Annotated[str, Field(max_length=32)] | Annotated[int, Field(strict=True, ge=0, le=10**12)]
    # The store keeps 32 characters: a longer name is a 422 here, not a database error.
    metric_type: str = Field(min_length=1, max_length=32)
    metrics: dict[str, FiniteFloat] = Field(max_length=200)
    reference_data: dict[str, FiniteJson] | None = Field(None, max_length=200)
    current_data: dict[str, FiniteJson] | None = Field(None, max_length=200)
    tags: dict[str, str] = Tags
    thresholds: dict[str, FiniteFloat] | None = Field(None, description="Overrides of the default alert thresholds.")


class MonitoringHistoryRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

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
