"""``/predict`` and ``/invocations`` in the app's OpenAPI document.

The app answers them on bare ASGI (see ``app``), so FastAPI does not know them; they are written
here from the served model's own signature, so the document states exactly what this model accepts:
its columns, their JSON types, which are required, in each shape the endpoints take.
"""

from __future__ import annotations

from typing import Any

from asgard_serving.model import BOOLEAN_TYPES, NUMERIC_TYPES, Column

JSON_TYPES = {**dict.fromkeys(NUMERIC_TYPES, "number"), **dict.fromkeys(BOOLEAN_TYPES, "boolean")}


def _value(column: Column) -> dict[str, Any]:
    return {"type": [JSON_TYPES.get(column.type, "string"), "null"]}


ERROR = {"content": {"application/json": {"schema": {"type": "object", "properties": {"detail": {"type": "string"}}}}}}
RESPONSES = {
    "400": {"description": "the body is not JSON", **ERROR},
    "413": {"description": "the body or its number of rows is past the server's limit", **ERROR},
    "403": {"description": "by entity id: what this deployment does not answer (stored features)", **ERROR},
    "422": {"description": "the body does not fit the model's signature; the detail names the problem", **ERROR},
    "503": {"description": "the model is still loading", **ERROR},
}
SUMMARIES = {
    "/predict": "Predict: predictions, optionally probabilities, one id per row for the prediction log",
    "/invocations": "MLflow's scoring protocol: {'predictions': [...]}",
}


def prediction_paths(
    columns: list[Column], join_keys: dict[str, str] | None = None, *, features_exposed: bool = False
) -> dict[str, dict[str, Any]]:
    """OpenAPI path items of the prediction paths (``join_keys``: the entity keys ``/predict`` also takes
    ids by, when the model's features can be read from the online store; ``features_exposed``: whether
    the deployment returns them on request, ``return_features``)."""
    return {
        path: {
            "post": {
                "summary": SUMMARIES[path],
                "operationId": path.strip("/"),
                "requestBody": body,
                "responses": {
                    "200": {"description": "the predictions", "content": {"application/json": {}}},
                    **RESPONSES,
                },
            }
        }
        for path, body in request_bodies(columns, join_keys, features_exposed=features_exposed).items()
    }


ID_TYPES = {"INT32": "integer", "INT64": "integer", "STRING": "string"}


def request_bodies(
    columns: list[Column], join_keys: dict[str, str] | None = None, *, features_exposed: bool = False
) -> dict[str, dict[str, Any]]:
    """OpenAPI ``requestBody`` objects by path."""
    required = [column.name for column in columns if column.required]
    record = {
        "type": "object",
        "properties": {column.name: _value(column) for column in columns},
        "required": required,
    }
    records = {"type": "array", "items": record, "minItems": 1}
    columnar = {
        "type": "object",
        "properties": {column.name: {"type": "array", "items": _value(column)} for column in columns},
        "required": required,
    }
    inputs = {"oneOf": [columnar, records]}
    predict = {
        "oneOf": [
            {
                "type": "object",
                "properties": {"inputs": inputs, "return_probabilities": {"type": "boolean"}},
                "required": ["inputs"],
                "additionalProperties": False,
            },
            records,
        ]
    }
    if join_keys:
        entities = {
            "type": "object",
            "properties": {
                name: {"type": "array", "items": {"type": ID_TYPES[kind]}, "minItems": 1}
                for name, kind in join_keys.items()
            },
            "required": sorted(join_keys),
            "additionalProperties": False,
        }
        flags = {name: {"type": "boolean"} for name in ("return_probabilities", "return_features")}
        if not features_exposed:  # (true is refused, 403: this deployment does not return stored features)
            flags["return_features"] = {"type": "boolean", "enum": [False]}
        predict["oneOf"].append(
            {
                "type": "object",
                "properties": {"entities": entities, **flags},
                "required": ["entities"],
                "additionalProperties": False,
            }
        )
    names = [column.name for column in columns]
    invocations = {
        "oneOf": [
            {
                "type": "object",
                "properties": {
                    "dataframe_split": {
                        "type": "object",
                        "properties": {
                            "columns": {"type": "array", "items": {"type": "string", "enum": names}},
                            "data": {"type": "array", "items": {"type": "array"}, "minItems": 1},
                        },
                        "required": ["columns", "data"],
                    }
                },
                "required": ["dataframe_split"],
            },
            *(
                {"type": "object", "properties": {key: schema}, "required": [key]}
                for key, schema in (("dataframe_records", records), ("inputs", inputs), ("instances", records))
            ),
        ]
    }
    return {
        path: {"required": True, "content": {"application/json": {"schema": schema}}}
        for path, schema in (("/predict", predict), ("/invocations", invocations))
    }
