"""Paths and connections a request names: only in its team's folder of the data roots (``<root>/<team>/``),
never another team's, never the platform's own folders or S3 prefixes."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from asgard.core.errors import InputError
from asgard.core.settings import Settings
from asgard.core.storage import Location, checked_connection, checked_data_path, team_data_roots


@pytest.fixture
def settings(tmp_path):
    home = tmp_path / "home"
    return Settings(home=home, data_roots=f"{home / 'data'},{tmp_path / 'exchange'},s3://lake/ml")


def check(settings, path, team="team-a", what="output_path"):
    return checked_data_path(str(path), what=what, team=team, settings=settings)


def test_each_team_has_a_folder_in_every_root(settings, tmp_path):
    data = settings.data_dir
    assert team_data_roots("team-a", settings) == [
        str(data / "team-a"),
        str(tmp_path / "exchange" / "team-a"),
        "s3://lake/ml/team-a",
    ]
    assert check(settings, data / "team-a" / "predictions" / "out.parquet") == str(
        data / "team-a" / "predictions" / "out.parquet"
    )
    assert check(settings, tmp_path / "exchange" / "team-a" / "in.parquet", what="sources")
    assert check(settings, "s3://lake/ml/team-a/predictions/q4.parquet") == "s3://lake/ml/team-a/predictions/q4.parquet"
    assert not (data / "team-a").exists()  # a check makes nothing: the folder appears on first write
    outside = [
        *("/etc/passwd.parquet", tmp_path / "elsewhere.parquet", data / "x.parquet", data / "team-ab" / "x.parquet"),
        *("s3://other-bucket/team-a/x.parquet", "s3://lake/ml/x.parquet", "s3://lake/ml/team-ab/x.parquet"),
    ]
    for path in outside:
        with pytest.raises(InputError, match="is outside the data roots of team 'team-a'") as refused:
            check(settings, path)
        assert str(data / "team-a") in str(refused.value) and "s3://lake/ml/team-a" in str(refused.value)


def test_team_a_cannot_name_team_bs_folder_by_any_path(settings, tmp_path):
    theirs = settings.data_dir / "team-b" / "scores.parquet"
    theirs.parent.mkdir(parents=True)
    pd.DataFrame({"x": [1]}).to_parquet(theirs)
    assert check(settings, theirs, team="team-b", what="sources")  # bob's own run reads it
    ours = settings.data_dir / "team-a"
    ours.mkdir()
    (ours / "to-b").symlink_to(theirs.parent)  # a link out of team a's folder into team b's
    for path in (
        theirs,  # absolute
        ours / ".." / "team-b" / "scores.parquet",  # ..
        ours / "to-b" / "scores.parquet",  # a symlink
        "../team-b/scores.parquet",  # relative, climbing out
        "s3://lake/ml/team-b/scores.parquet",  # the S3 root's team b folder
        "s3://lake/ml/team-a/../b/scores.parquet",  # .. in a key
    ):
        with pytest.raises(InputError) as refused:
            check(settings, path, what="sources")
        assert "team 'team-a'" in str(refused.value) or "'..' part" in str(refused.value), refused.value
    with pytest.raises(InputError, match="is not a team name"):
        check(settings, ours / "x.parquet", team="../team-b")


def test_a_relative_path_lands_in_the_teams_first_root(settings, tmp_path):
    expected = settings.data_dir / "team-a" / "predictions" / "batch.parquet"
    assert check(settings, "predictions/batch.parquet") == str(expected)
    assert check(settings, "predictions/batch.parquet", team="team-b") == str(
        settings.data_dir / "team-b" / "predictions" / "batch.parquet"
    )
    on_s3 = Settings(home=tmp_path / "home", data_roots=f"s3://lake/ml,{tmp_path}")
    assert check(on_s3, "predictions/batch.parquet") == "s3://lake/ml/team-a/predictions/batch.parquet"


def test_the_platforms_own_folders_are_refused_whatever_the_roots_say(tmp_path):
    home = tmp_path / "home"
    # A careless operator's root that holds everything: the platform's folders stay out of reach.
    settings = Settings(home=home, data_roots=str(home / "data"))
    for team, path in (("gold", "warehouse/customer_features.parquet"), ("runs", "x/y.parquet"),
                       ("feast", "registry.db"), ("prediction-logs", "churn/2026-12-05.jsonl")):  # fmt: skip
        with pytest.raises(InputError, match="inside the platform's own folder"):
            check(settings, home / "data" / team / path, team=team)
    everything = Settings(home=home, data_roots=str(tmp_path))
    with pytest.raises(InputError, match="inside the platform's own folder"):
        check(everything, home / "airflow" / "airflow.db", team="home")


def test_prediction_logs_are_the_platforms_own_and_no_model_name_reaches_batch_outputs(settings):
    """A model named ``score_batch`` gets its own log folder, which no request path may name; score_batch's
    default outputs go to the team's first root."""
    from asgard.scoring.plan import default_output_path

    log = settings.prediction_log_folder("score_batch")
    assert log == settings.data_dir / "prediction-logs" / "score_batch"
    for what in ("sources", "output_path"):
        with pytest.raises(InputError, match="inside the platform's own folder"):
            check(settings, log / "2026-12-05.jsonl", team="prediction-logs", what=what)
        with pytest.raises(InputError):
            check(settings, log / "x.parquet", what=what)
    output = default_output_path("score_batch", "manual__2026-12-05T00:00:00+00:00", team="team-a", settings=settings)
    assert output.startswith(f"{settings.data_dir / 'team-a' / 'predictions' / 'score_batch'}/") and output.endswith(
        ".parquet"
    )
    assert check(settings, output) == output


def test_the_platforms_s3_prefixes_are_refused_whatever_the_roots_say(moto_server, monkeypatch, tmp_path):
    """In production the roots are on the platform's own bucket; its prediction logs, runs, gold warehouse,
    reports, MLflow artifacts and Airflow logs sit beside them: no team's path reaches one, not even
    through a root that covers them. Team a's own folder is read and written for real (moto)."""
    from airflow.providers.amazon.aws.hooks.s3 import S3Hook

    connection = {"conn_type": "aws", "login": "k", "password": "s", "extra": {"endpoint_url": moto_server}}
    monkeypatch.setenv("AIRFLOW_CONN_AWS_DEFAULT", json.dumps(connection))
    S3Hook().create_bucket("platform")
    settings = Settings(
        home=tmp_path / "home",
        profile="production",
        s3_bucket="platform",
        data_roots="s3://platform/data,s3://platform",  # the second: a root over the whole bucket
        prediction_log_uri="s3://platform/serving-logs",
    )
    assert settings.runs_root == "s3://platform/runs" and settings.gold_warehouse_uri == "s3://platform/gold"
    written = Location(check(settings, "predictions/out.parquet")).write_parquet(pd.DataFrame({"x": [1, 2]}))
    assert written.uri == "s3://platform/data/team-a/predictions/out.parquet"
    assert Location(check(settings, written.uri, what="sources")).read_parquet()["x"].tolist() == [1, 2]
    log = Location("s3://platform/serving-logs/churn/2026-12-05.jsonl").write_bytes(b'{"prediction": 1}\n')
    for team, path in (
        ("serving-logs", log.uri),  # team "serving-logs" of the whole-bucket root: the prediction logs
        ("runs", "s3://platform/runs/score_batch/x.parquet"),
        ("gold", "s3://platform/gold/customer_features/data/x.parquet"),
        ("monitoring", "s3://platform/monitoring/reports/r.parquet"),
        ("mlflow", "s3://platform/mlflow/1/model.pkl"),
        ("airflow-logs", "s3://platform/airflow-logs/dag_id=score_batch/x.parquet"),
    ):
        for what in ("sources", "output_path"):
            with pytest.raises(InputError, match="inside the platform's own storage s3://platform/"):
                check(settings, path, team=team, what=what)
    # The default team's production root, as the main job uses it.
    assert team_data_roots("default", Settings(profile="production", s3_bucket="platform", data_roots=""))[0] == (
        "s3://platform/data/default"
    )


def test_only_allowed_connections_may_be_named():
    settings = Settings(allowed_aws_conn_ids="aws_default, aws_batch")
    assert checked_connection("aws_batch", settings=settings) == "aws_batch"
    with pytest.raises(InputError, match="aws_conn_id 'aws_admin' is not one a request may use"):
        checked_connection("aws_admin", settings=settings)
