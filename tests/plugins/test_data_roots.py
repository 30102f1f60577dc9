"""Paths and connections a request names: only under the data roots, never the platform's own folders."""

from __future__ import annotations

import pytest

from asgard.core.errors import InputError
from asgard.core.settings import Settings
from asgard.core.storage import checked_connection, checked_data_path


@pytest.fixture
def settings(tmp_path):
    home = tmp_path / "home"
    return Settings(home=home, data_roots=f"{home / 'data'},{tmp_path / 'exchange'},s3://team-bucket/predictions")


def test_paths_under_a_root_pass_and_others_are_refused_naming_the_roots(settings, tmp_path):
    data = settings.data_dir
    assert checked_data_path(str(data / "predictions" / "out.parquet"), what="output_path", settings=settings)
    assert checked_data_path(str(tmp_path / "exchange" / "in.parquet"), what="sources", settings=settings)
    assert checked_data_path("s3://team-bucket/predictions/q4.parquet", what="output_path", settings=settings)
    for outside in ("/etc/passwd.parquet", str(tmp_path / "elsewhere.parquet"), "s3://other-bucket/x.parquet",
                    "s3://team-bucket/predictions-not/x.parquet"):  # fmt: skip
        with pytest.raises(InputError, match="is outside the data roots"):
            checked_data_path(outside, what="output_path", settings=settings)


def test_the_platforms_own_folders_and_escapes_are_refused(settings, tmp_path):
    gold = settings.data_dir / "gold" / "warehouse" / "customer_features.parquet"
    with pytest.raises(InputError, match="inside the platform's own folder"):
        checked_data_path(str(gold), what="output_path", settings=settings)
    escape = str(settings.data_dir / "predictions" / ".." / "gold" / "x.parquet")
    with pytest.raises(InputError, match="inside the platform's own folder"):
        checked_data_path(escape, what="output_path", settings=settings)
    sneaky = str(tmp_path / "exchange" / ".." / "home" / "run" / "secrets.parquet")
    with pytest.raises(InputError):
        checked_data_path(sneaky, what="labels", settings=settings)
    (tmp_path / "exchange").mkdir()
    (tmp_path / "exchange" / "link").symlink_to(settings.data_dir.parent)  # a link out of a root
    with pytest.raises(InputError, match="inside the platform's own folder"):
        checked_data_path(
            str(tmp_path / "exchange" / "link" / "airflow" / "airflow.db"), what="sources", settings=settings
        )


def test_only_allowed_connections_may_be_named():
    settings = Settings(allowed_aws_conn_ids="aws_default, aws_batch")
    assert checked_connection("aws_batch", settings=settings) == "aws_batch"
    with pytest.raises(InputError, match="aws_conn_id 'aws_admin' is not one a request may use"):
        checked_connection("aws_admin", settings=settings)


def test_prediction_logs_are_the_platforms_own_and_no_model_name_reaches_batch_outputs(settings):
    """A model named ``score_batch`` gets its own log folder, which no request path may name; score_batch's
    default outputs stay where its runs write them."""
    from asgard.scoring.plan import default_output_path

    log = settings.prediction_log_folder("score_batch")
    assert log == settings.data_dir / "prediction-logs" / "score_batch"
    with pytest.raises(InputError, match="inside the platform's own folder"):
        checked_data_path(str(log / "2026-12-05.jsonl"), what="sources", settings=settings)
    with pytest.raises(InputError, match="inside the platform's own folder"):
        checked_data_path(str(log / "x.parquet"), what="output_path", settings=settings)
    output = default_output_path("score_batch", "manual__2026-12-05T00:00:00+00:00", settings=settings)
    assert not output.startswith(str(settings.prediction_logs_dir))
    assert checked_data_path(output, what="output_path", settings=settings)
