"""What a serving image needs to read a model version's features from the online store by entity id.

The serving image carries no Feast: at build time the platform writes, with Feast's own functions,
everything the image's reader (``asgard_serving.online``) needs to find the values Feast stored:
the views the version was trained on and the features its signature takes from each, each view's
SQLite table (``_table_id``), each feature's Redis hash field (``_mmh3`` of ``view:feature``), and
entity keys ``serialize_entity_key`` produced for sample ids, which the image re-derives at start-up
and refuses to start on if they differ.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from feast import FeatureStore

# What the image's reader decodes: scalar values, and the join key types Feast serializes.
VALUE_TYPES = ("INT32", "INT64", "DOUBLE", "FLOAT", "BOOL", "STRING")
JOIN_KEY_TYPES = ("INT32", "INT64", "STRING")
# Ids whose serialized keys the image must reproduce byte for byte (signs, widths, multibyte text).
SAMPLE_IDS = {"INT32": [0, 1, -1, 2**31 - 1], "INT64": [0, 7, -1, 2**40 + 3], "STRING": ["", "a", "kunde-ü", "42"]}


class NotReadable(Exception):
    """Why a version's features cannot be read by entity id (the image answers 422 with this reason)."""


def online_read_spec(store: FeatureStore, view_names: list[str], inputs: list[str]) -> dict[str, Any]:
    """The bundle's ``online_features``: how to read ``inputs`` (the model's input columns) for an
    entity from the views the version was trained on; :class:`NotReadable` naming why not."""
    from feast.errors import FeatureViewNotFoundException
    from feast.infra.online_stores.helpers import _mmh3
    from feast.infra.online_stores.sqlite import _table_id

    config = store.config
    if not view_names:
        raise NotReadable("it was not trained on Feast feature views")
    if getattr(config.registry, "enable_online_feature_view_versioning", False):
        raise NotReadable("the feature store keeps versioned online tables, which the image does not read")
    if config.entity_key_serialization_version != 3:
        raise NotReadable(f"the store serializes entity keys with version {config.entity_key_serialization_version}")
    views, join_keys, covered = [], None, set()
    for name in view_names:
        try:
            view = store.get_feature_view(name)
        except FeatureViewNotFoundException:
            raise NotReadable(f"feature view {name} is no longer registered") from None
        if not view.online:
            raise NotReadable(f"feature view {name} is not served online")
        keys = {column.name: column.dtype.to_value_type().name for column in view.entity_columns}
        if join_keys is not None and keys != join_keys:
            raise NotReadable(f"its views are keyed differently ({join_keys} and {name}'s {keys})")
        join_keys = keys
        unsupported = {key: kind for key, kind in keys.items() if kind not in JOIN_KEY_TYPES}
        if unsupported:
            raise NotReadable(f"view {name} has join keys of types the image does not serialize: {unsupported}")
        features = []
        for feature in view.features:
            if feature.name not in inputs or feature.name in covered:
                continue
            kind = feature.dtype.to_value_type().name
            if kind not in VALUE_TYPES:
                raise NotReadable(f"feature {name}.{feature.name} is {kind}, which the image does not decode")
            features.append({"name": feature.name, "type": kind, "redis_field": _mmh3(f"{name}:{feature.name}").hex()})
            covered.add(feature.name)
        views.append(
            {
                "name": name,
                "sqlite_table": _table_id(config.project, view),
                "redis_ts_field": f"_ts:{name}",
                "features": features,
            }
        )
    uncovered = [name for name in inputs if name not in covered]
    if uncovered:
        raise NotReadable(f"input(s) {', '.join(uncovered)} come from no feature view it was trained on")
    return {
        "project": config.project,
        "entity_key_serialization_version": config.entity_key_serialization_version,
        "join_keys": join_keys,
        "views": views,
        "key_samples": key_samples(join_keys, config.entity_key_serialization_version),
    }


def key_samples(join_keys: dict[str, str], version: int) -> list[dict[str, Any]]:
    """Sample entities and their keys as Feast's ``serialize_entity_key`` writes them (hex)."""
    from feast.infra.key_encoding_utils import serialize_entity_key
    from feast.protos.feast.types.EntityKey_pb2 import EntityKey
    from feast.type_map import python_values_to_proto_values
    from feast.value_type import ValueType

    samples = []
    for index in range(len(SAMPLE_IDS["INT64"])):
        entities = {name: SAMPLE_IDS[kind][index] for name, kind in join_keys.items()}
        protos = [
            python_values_to_proto_values([entities[name]], ValueType[kind])[0] for name, kind in join_keys.items()
        ]
        key = serialize_entity_key(
            EntityKey(join_keys=list(join_keys), entity_values=protos), entity_key_serialization_version=version
        )
        samples.append({"entities": entities, "key": key.hex()})
    return samples


def serving_location(config: Any) -> str | None:
    """Where a serving process reads ``config``'s online store: ``sqlite:///<absolute path>`` or a Redis
    URL (from Feast's ``host:port,db=..,ssl=..,password=..`` connection string); None for any other store."""
    from urllib.parse import quote

    online = config.online_store
    kind = getattr(online, "type", "")
    if kind == "sqlite":
        path = Path(online.path)
        if not path.is_absolute() and config.repo_path:
            path = Path(config.repo_path) / path
        return f"sqlite:///{path.resolve()}"  # SQLAlchemy's spelling: four slashes before an absolute path
    if kind == "redis" and str(getattr(online, "redis_type", "redis")).endswith("redis"):
        from feast.infra.online_stores.redis import RedisOnlineStore

        nodes, params = RedisOnlineStore._parse_connection_string(online.connection_string)
        scheme = "rediss" if str(params.get("ssl", "")).lower() == "true" else "redis"
        password = params.get("password")
        credentials = f":{quote(str(password), safe='')}@" if password else ""
        node = nodes[0]
        return f"{scheme}://{credentials}{node['host']}:{node.get('port', 6379)}/{params.get('db', 0)}"
    return None
