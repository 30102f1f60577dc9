"""The point-in-time join production's offline store runs in Trino, over uploaded entity rows.

Feast's Trino template keys each entity row by ``CONCAT`` of its keys and time without a separator (the
rows ``(1, 12, t)`` and ``(11, 2, t)`` of a two-key view become one row), and picks a row's features by
joining ``MAX(created_timestamp)`` back (a row whose created timestamp is NULL is lost; two rows of one
time and created timestamp both come back). Here each entity row is keyed by its position in the upload
(:data:`asgard.features.trino_uploads.ROW_COLUMN`), and each view's newest row not after the entity row's
time (within the view's ttl; the newest created timestamp first, NULLs last) is ranked directly. The
query context, the output's columns and the retrieval job are Feast's own.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from feast.infra.offline_stores import offline_utils
from feast.infra.offline_stores.contrib.trino_offline_store import trino as feast_trino
from feast.infra.offline_stores.offline_store import RetrievalMetadata
from feast.on_demand_feature_view import OnDemandFeatureView

from asgard.features import gold
from asgard.features.trino_uploads import ROW_COLUMN, EntityUpload, upload_entity_rows

if TYPE_CHECKING:
    import pandas as pd
    from feast.repo_config import RepoConfig

# The join's Jinja template (Feast renders it with its query context), each entity row keyed by its position.
POINT_IN_TIME_JOIN = Path(__file__).with_name("trino_point_in_time.sql").read_text().replace("{row}", ROW_COLUMN)


class UploadedEntityRowsJob(feast_trino.TrinoRetrievalJob):
    """Feast's Trino retrieval job over an upload, which it drops once it has run (through pyiceberg: the
    platform's Trino user only reads the Iceberg catalog); Trino's lower-cased names given back their case."""

    def __init__(self, *args: Any, upload: EntityUpload, output_columns: list[str], **kwargs: Any) -> None:
        self.upload = upload
        self.output_columns = output_columns
        super().__init__(*args, **kwargs)

    def _to_df_internal(self, timeout: int | None = None) -> pd.DataFrame:
        frame = super()._to_df_internal(timeout=timeout)
        return frame.rename(columns={name.lower(): name for name in self.output_columns})

    def _drop_temp_table(self) -> None:
        upload = getattr(self, "upload", None)
        if upload is not None:
            upload.drop()


def historical_retrieval(
    config: RepoConfig,
    views: list,
    feature_refs: list[str],
    entity_df: pd.DataFrame,
    registry: Any,
    project: str,
    full_feature_names: bool = False,
    filter_by_created_timestamp: bool = False,
    *,
    location: gold.GoldLocation,
) -> UploadedEntityRowsJob:
    """Feast's ``get_historical_features`` for ``views`` (whose sources Trino reads) and a frame of entity
    rows, uploaded to ``location``'s catalog; the upload is dropped if the retrieval cannot be planned."""
    entity_schema = dict(zip(entity_df.columns, entity_df.dtypes, strict=True))
    timestamp_column = offline_utils.infer_event_timestamp_from_entity_df(entity_schema)
    join_keys = offline_utils.get_expected_join_keys(project=project, feature_views=views, registry=registry)
    offline_utils.assert_expected_columns_in_entity_df(entity_schema, join_keys, timestamp_column)
    # A frame's time range is computed in pandas: no query (the client is not used for it).
    time_range = feast_trino._get_entity_df_event_timestamp_range(entity_df, timestamp_column, None)
    upload = upload_entity_rows(entity_df, location)
    try:
        context = offline_utils.get_feature_view_query_context(
            feature_refs=feature_refs, feature_views=views, registry=registry, project=project,
            entity_df_timestamp_range=time_range,
        )  # fmt: skip
        query = offline_utils.build_point_in_time_query(
            context, left_table_query_string=upload.trino_name, entity_df_event_timestamp_col=timestamp_column,
            entity_df_columns=entity_schema.keys(), query_template=POINT_IN_TIME_JOIN,
            full_feature_names=full_feature_names, filter_by_created_timestamp=filter_by_created_timestamp,
        )  # fmt: skip
        names = [
            *entity_schema,
            *(_output_name(view, feature, full_feature_names) for view in context for feature in view.features),
        ]
        return UploadedEntityRowsJob(
            query=query, client=feast_trino._get_trino_client(config), config=config,
            full_feature_names=full_feature_names, upload=upload, output_columns=names,
            on_demand_feature_views=OnDemandFeatureView.get_requested_odfvs(feature_refs, project, registry),
            metadata=RetrievalMetadata(
                features=feature_refs, keys=list(set(entity_schema) - {timestamp_column}),
                min_event_timestamp=time_range[0], max_event_timestamp=time_range[1],
            ),
        )  # fmt: skip
    except BaseException:
        upload.drop()
        raise


def _output_name(view: Any, feature: str, full_feature_names: bool) -> str:
    """A feature's column in the answer, as Feast names it (build_point_in_time_query)."""
    name = view.field_mapping.get(feature, feature)
    return f"{view.name}__{name}" if full_feature_names else name
