"""Registering a feature view over a gold-layer table: checked against the gold layer, then applied.

Every problem of a request is collected and reported at once; the registry is changed only when
the whole request is sound, and registering the same definition again changes nothing.
"""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING, Any

from asgard.features import gold
from asgard.features.store import DTYPES, FeatureRequestError, gold_columns, gold_source

if TYPE_CHECKING:
    import pyarrow as pa
    from feast import FeatureStore, FeatureView


def validate_request(request: dict[str, Any], columns: dict[str, pa.DataType] | None = None) -> dict[str, Any]:
    """Check a ``register_features`` request against the gold layer; return it normalised.

    Every problem is collected and reported at once, so one failed run tells the whole story.
    """
    import pyarrow as pa

    source = request["source"]
    table_name = source["table_name"]
    if columns is None:
        try:
            # Through Trino's information_schema when Feast reads the gold layer through Trino.
            columns = gold_columns(table_name)
        except gold.GoldLayerError as error:
            raise FeatureRequestError(str(error)) from None
    problems: list[str] = []

    def column_type(name: str, role: str) -> pa.DataType | None:
        if name not in columns:
            problems.append(f"{role} column {name!r} is not in gold table {table_name!r}")
            return None
        return columns[name]

    ts_type = column_type(source["timestamp_field"], "timestamp")
    if ts_type is not None and not pa.types.is_timestamp(ts_type):
        problems.append(f"timestamp column {source['timestamp_field']!r} has type {ts_type}, not a timestamp")
    created = source.get("created_timestamp_column")
    if created:
        created_type = column_type(created, "created timestamp")
        if created_type is not None and not pa.types.is_timestamp(created_type):
            problems.append(f"created timestamp column {created!r} has type {created_type}, not a timestamp")
    for key in request["entities"]:
        key_type = column_type(key, "entity")
        if key_type is not None and not (pa.types.is_integer(key_type) or pa.types.is_string(key_type)):
            problems.append(f"entity column {key!r} has type {key_type}; entity keys are integers or strings")

    seen: set[str] = set()
    reserved = {*request["entities"], source["timestamp_field"], created or ""}
    for feature in request["features"]:
        name, dtype = feature["name"], feature["dtype"]
        if name in seen:
            problems.append(f"feature {name!r} is listed twice")
        seen.add(name)
        if name in reserved:
            problems.append(f"feature {name!r} is an entity or timestamp column")
        if dtype not in DTYPES:
            problems.append(f"feature {name!r} has unknown dtype {dtype!r}; known: {', '.join(DTYPES)}")
            continue
        actual = column_type(name, "feature")
        if actual is not None and str(actual) not in DTYPES[dtype][1]:
            problems.append(f"feature {name!r} is {dtype} in the request but {actual} in gold table {table_name!r}")
    if problems:
        raise FeatureRequestError("; ".join(problems))
    return {**request, "features": [dict(f) for f in request["features"]]}


def build_feature_view(request: dict[str, Any], store: FeatureStore) -> tuple[FeatureView, list]:
    """The FeatureView (and any new Entity) a validated request describes."""
    from feast import Entity, FeatureView, Field
    from feast import types as feast_types
    from feast.value_type import ValueType

    existing = {entity.join_key: entity for entity in store.list_entities()}
    entities, new_entities = [], []
    for key in request["entities"]:
        entity = existing.get(key)
        if entity is None:
            entity = Entity(name=key, join_keys=[key], value_type=ValueType.INT64)
            new_entities.append(entity)
        entities.append(entity)
    source = request["source"]
    view = FeatureView(
        name=request["name"],
        entities=entities,
        ttl=timedelta(days=request.get("ttl_days", 365)),
        schema=[Field(name=f["name"], dtype=getattr(feast_types, DTYPES[f["dtype"]][0])) for f in request["features"]],
        source=gold_source(source["table_name"], source["timestamp_field"], source.get("created_timestamp_column")),
        online=True,
        description=request.get("description", ""),
        tags={str(k): str(v) for k, v in (request.get("tags") or {}).items()},
    )
    return view, new_entities


def definition(view: FeatureView) -> dict[str, Any]:
    """What a user defines in a view (not when it was applied or materialized): equal means no-op."""
    source = view.batch_source
    return {
        "name": view.name,
        "entities": sorted(view.entities),
        "ttl": view.ttl.total_seconds() if view.ttl else None,
        "features": [(f.name, str(f.dtype)) for f in view.features],
        "source": (source.name, source.timestamp_field, source.created_timestamp_column),
        "description": view.description,
        "tags": dict(sorted(view.tags.items())),
        "online": view.online,
    }


# The view tag naming the team that registered it: only its members (and admins) change the view.
TEAM_TAG = "asgard.team"


def register_feature_view(
    request: dict[str, Any], store: FeatureStore, *, team: str | None = None, any_view: bool = False
) -> dict[str, Any]:
    """Validate and apply one view for ``team`` (a new view becomes its; an existing one must be its, or
    ``any_view``: an admin's); re-registering the same definition changes nothing. A view points models'
    training sets and live predictions at a table, so another team repointing it would feed them its rows."""
    from feast.errors import FeatureViewNotFoundException

    from asgard.core.teams import TeamRefusal

    validated = validate_request(request)
    view, new_entities = build_feature_view(validated, store)
    try:
        current = store.get_feature_view(view.name)
    except FeatureViewNotFoundException:
        current = None
    owner = (current.tags or {}).get(TEAM_TAG) if current is not None else team
    if current is not None and not any_view and owner != team:
        whose = f"belongs to team {owner!r}" if owner else "was registered by no team (every team reads it)"
        raise TeamRefusal(f"feature view {view.name!r} {whose}: a registration for team {team!r} may not change it")
    if owner:
        view.tags[TEAM_TAG] = owner
    if current is not None and definition(current) == definition(view):
        return {"feature_view": view.name, "action": "unchanged"}
    store.apply([*new_entities, view])
    return {
        "feature_view": view.name,
        "action": "created" if current is None else "updated",
        "new_entities": [e.name for e in new_entities],
    }


def describe_views(store: FeatureStore) -> list[dict[str, Any]]:
    """Every feature view in the registry, in the seed's ``POST /feast/features`` shape."""
    views = []
    for view in sorted(store.list_feature_views(), key=lambda view: view.name):
        source = view.batch_source
        views.append(
            {
                "name": view.name,
                "entities": sorted(view.entities),
                "features": [{"name": field.name, "dtype": str(field.dtype)} for field in view.features],
                "source": {"name": source.name, "timestamp_field": source.timestamp_field},
                "ttl_days": view.ttl.total_seconds() / 86400 if view.ttl else None,
                "online": view.online,
                "description": view.description,
                "tags": dict(view.tags),
            }
        )
    return views
