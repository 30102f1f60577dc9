"""Training sets: labelled gold-layer rows joined point-in-time with Feast features, split and profiled.

Between tasks the data travels as Parquet files in a folder scoped to the DAG run (never XCom);
each file is written atomically, so a retried task either finds a whole file or none.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from asgard.core.errors import InputError
from asgard.core.settings import Settings, get_settings
from asgard.core.storage import Location
from asgard.features import gold, training_sets

if TYPE_CHECKING:
    import pandas as pd
    from feast import FeatureStore

DEFAULT_LABEL_TABLE = "customer_labels"
ENTITY_TIMESTAMP = "event_timestamp"


class TrainingDataError(InputError):
    """The data source of a training request does not match the feature store or the gold layer."""


# --------------------------------------------------------------------------- run-scoped files
def run_storage(dag_id: str, run_id: str, settings: Settings | None = None) -> Location:
    """Where one DAG run's files that pass between its tasks live: under ``runs_uri`` (production: S3,
    since the next task may run on another worker; embedded: the data folder), in a folder named by a
    digest of the raw run id (:func:`asgard.training.scripts.run_folders.run_key`): a run id is chosen by
    whoever triggers the run, and two ids must never share the folder another run's training set is in."""
    from asgard.training.scripts.run_folders import run_key, segment

    settings = settings or get_settings()
    return Location(settings.runs_root, settings.aws_conn_id).child(segment(dag_id), run_key(dag_id, run_id))


# --------------------------------------------------------------------------- the data source
@dataclass(frozen=True)
class DataSource:
    """A checked ``data_source``: feature views, the label table and its target, optional entities."""

    feature_views: tuple[str, ...]
    features: tuple[str, ...]  # "view:feature" references, in view order
    target_column: str
    label_table: str
    entities: dict[str, list[Any]]

    def as_dict(self) -> dict[str, Any]:
        return {
            "feature_views": list(self.feature_views),
            "features": list(self.features),
            "target_column": self.target_column,
            "label_table": self.label_table,
            "entities": self.entities,
        }

    def as_conf(self) -> dict[str, Any]:
        """The ``data_source`` as ``train_model``'s conf gives it (features are resolved again from the views)."""
        conf: dict[str, Any] = {
            "feature_views": list(self.feature_views),
            "target_column": self.target_column,
            "label_table": self.label_table,
        }
        return {**conf, "entities": self.entities} if self.entities else conf

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DataSource:
        return cls(
            tuple(data["feature_views"]),
            tuple(data["features"]),
            data["target_column"],
            data["label_table"],
            dict(data.get("entities") or {}),
        )

    @property
    def feature_names(self) -> list[str]:
        return [reference.split(":", 1)[1] for reference in self.features]


def check_data_source(request: dict[str, Any], store: FeatureStore) -> DataSource:
    """Check a request's ``data_source`` against the registry and the gold layer, naming every problem."""
    views = {view.name: view for view in store.list_feature_views()}
    requested = list(request["feature_views"])
    label_table = request.get("label_table") or DEFAULT_LABEL_TABLE
    target = request["target_column"]
    entities = dict(request.get("entities") or {})
    problems = []
    unknown = [name for name in requested if name not in views]
    if unknown:
        problems.append(
            f"unknown feature view(s) {', '.join(unknown)}; registered: {', '.join(sorted(views)) or 'none'}"
        )
    try:
        columns = gold.table_columns(label_table)
    except gold.GoldLayerError as error:
        problems.append(str(error))
        columns = None
    if columns is not None:
        if target not in columns:
            problems.append(f"target column {target!r} is not in label table {label_table!r} ({', '.join(columns)})")
        if ENTITY_TIMESTAMP not in columns:
            problems.append(f"label table {label_table!r} has no {ENTITY_TIMESTAMP!r} column to join features as of")
        join_keys = {key.name for name in requested if name in views for key in views[name].entity_columns}
        for key in sorted(join_keys - set(columns)):
            problems.append(f"label table {label_table!r} has no column {key!r}, the join key of the feature views")
        for key in sorted(set(entities) - set(columns)):
            problems.append(f"entities filter names {key!r}, which is not a column of label table {label_table!r}")
    if problems:
        raise TrainingDataError("; ".join(problems))
    references = [f"{name}:{feature.name}" for name in requested for feature in views[name].features]
    names = [reference.split(":", 1)[1] for reference in references]
    duplicated = sorted({name for name in names if names.count(name) > 1})
    if duplicated:
        raise TrainingDataError(f"feature(s) {', '.join(duplicated)} appear in more than one of the feature views")
    references = [reference for reference in references if reference.split(":", 1)[1] != target]
    return DataSource(tuple(requested), tuple(references), target, label_table, entities)


def build_training_set(
    source: DataSource,
    store: FeatureStore,
    *,
    label_rows: Callable[[pd.DataFrame], pd.DataFrame] | None = None,
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Labelled rows with their features as of each row's timestamp, and the data's lineage.

    Rows come from the label table (only those ``label_rows`` keeps of the whole table, when given;
    then restricted to ``entities`` when given); Feast's point-in-time join
    (:mod:`asgard.features.training_sets`: out of core on the embedded profile) adds each feature
    view's newest values not after the label's timestamp.
    """
    labels_table = gold.load_table(source.label_table)
    labels = labels_table.scan().to_pandas()
    if label_rows is not None:
        labels = label_rows(labels)
    for column, values in source.entities.items():
        labels = labels[labels[column].isin(values)]
    if labels.empty:
        detail = f" for the requested entities ({', '.join(source.entities)})" if source.entities else ""
        raise TrainingDataError(f"empty training set: label table {source.label_table!r} has no rows{detail}")
    # A label table may hold the features too (a user's one table): the features come from the views,
    # as of each row's time, so the label rows' own copies stay out of the join (same names collide).
    own_copies = set(source.feature_names) - {source.target_column}
    labels = labels.drop(columns=[column for column in labels.columns if column in own_copies])
    labels = labels.reset_index(drop=True)
    # Out of core on the embedded offline store; Feast's own join (and its Trino errors) otherwise.
    joined = training_sets.get_historical_features(store, labels, list(source.features), purpose="training set")
    key_columns = [column for column in labels.columns if column != source.target_column]
    joined = joined.sort_values(key_columns, kind="stable").reset_index(drop=True)
    snapshots = {source.label_table: _snapshot(labels_table)}
    for name in source.feature_views:
        table = getattr(store.get_feature_view(name).batch_source, "iceberg_table", None)
        if table:
            snapshots[table] = gold.snapshot_id(table)
    lineage = {"rows": len(joined), "gold_snapshots": snapshots, "feature_views": list(source.feature_views)}
    return joined, lineage


def _snapshot(table) -> int | None:
    snapshot = table.current_snapshot()
    return snapshot.snapshot_id if snapshot else None


def split(
    frame: pd.DataFrame, target: str, model_type: str, *, test_size: float, seed: int
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A deterministic train/holdout split (stratified for classification); checks the target is usable."""
    from sklearn.model_selection import train_test_split

    frame = frame[frame[target].notna()]
    if len(frame) < 10:
        raise TrainingDataError(f"training set too small: {len(frame)} labelled rows (at least 10 are needed)")
    stratify = None
    if model_type == "classification":
        counts = frame[target].value_counts()
        if len(counts) < 2:
            raise TrainingDataError(
                f"target {target!r} has a single class ({counts.index[0]!r}) in the training set: "
                "a classifier needs at least two"
            )
        stratify = frame[target] if counts.min() >= 2 else None
    train, holdout = train_test_split(frame, test_size=test_size, random_state=seed, stratify=stratify)
    return train.reset_index(drop=True), holdout.reset_index(drop=True)


# --------------------------------------------------------------------------- reference profile
def reference_profile(features: pd.DataFrame, target: pd.Series, *, bins: int = 10) -> dict[str, Any]:
    """What the training data looked like, per feature: what monitoring compares new data against.

    Numeric features: missing rate, mean, std, quantiles, and histogram counts over decile edges
    (the bins a PSI check uses). Categorical features: missing rate and category frequencies.
    """
    import numpy as np
    import pandas as pd

    profile: dict[str, Any] = {"rows": len(features), "features": {}}
    for column in features.columns:
        values = features[column]
        missing = float(values.isna().mean())
        present = values.dropna()
        if pd.api.types.is_numeric_dtype(values):
            edges = np.unique(np.quantile(present, np.linspace(0, 1, bins + 1))) if len(present) else np.array([])
            counts = np.histogram(present, bins=edges)[0] if len(edges) > 1 else np.array([len(present)])
            profile["features"][column] = {
                "kind": "numeric",
                "missing_rate": missing,
                "mean": float(present.mean()) if len(present) else None,
                "std": float(present.std()) if len(present) > 1 else None,
                "min": float(present.min()) if len(present) else None,
                "max": float(present.max()) if len(present) else None,
                "quantiles": {str(q): float(present.quantile(q)) for q in (0.05, 0.25, 0.5, 0.75, 0.95)}
                if len(present)
                else {},
                "bin_edges": [float(edge) for edge in edges],
                "bin_counts": [int(count) for count in counts],
            }
        else:
            frequencies = present.astype(str).value_counts(normalize=True)
            profile["features"][column] = {
                "kind": "categorical",
                "missing_rate": missing,
                "frequencies": {str(key): float(value) for key, value in frequencies.items()},
            }
    if pd.api.types.is_numeric_dtype(target):
        profile["target"] = {"name": target.name, "mean": float(target.mean())}
    return profile
