"""Settings come from the environment, with embedded defaults and clear errors."""

from __future__ import annotations

import pytest

from asgard.core.settings import REPO_ROOT, Settings


def test_defaults(monkeypatch):
    for name in ("ASGARD_HOME", "ASGARD_PROFILE", "ASGARD_AIRFLOW_PORT", "ASGARD_MLFLOW_PORT"):
        monkeypatch.delenv(name, raising=False)
    settings = Settings.from_env()
    assert settings.home == REPO_ROOT / ".asgard"
    assert settings.profile == "embedded"
    assert settings.airflow_url == "http://127.0.0.1:8080"
    assert settings.mlflow_url == "http://127.0.0.1:5050"
    assert settings.dags_folder == REPO_ROOT / "dags"


def test_overrides(monkeypatch, tmp_path):
    monkeypatch.setenv("ASGARD_HOME", str(tmp_path))
    monkeypatch.setenv("ASGARD_AIRFLOW_PORT", "18080")
    monkeypatch.setenv("ASGARD_PROFILE", "production")
    settings = Settings.from_env()
    assert settings.home == tmp_path and settings.airflow_port == 18080 and settings.profile == "production"
    assert settings.logs_dir == tmp_path / "logs"


def test_bad_port_is_named(monkeypatch):
    monkeypatch.setenv("ASGARD_MLFLOW_PORT", "fifty")
    with pytest.raises(ValueError, match="ASGARD_MLFLOW_PORT must be an integer, got 'fifty'"):
        Settings.from_env()


def test_bad_profile_is_named(monkeypatch):
    monkeypatch.setenv("ASGARD_PROFILE", "cloudy")
    with pytest.raises(ValueError, match="ASGARD_PROFILE must be one of embedded, production"):
        Settings.from_env()


def test_prediction_logs_are_the_local_folder_and_the_clusters_prefix(monkeypatch, tmp_path):
    monkeypatch.setenv("ASGARD_HOME", str(tmp_path))
    monkeypatch.delenv("ASGARD_PREDICTION_LOG_URI", raising=False)
    assert Settings.from_env().prediction_logs("churn") == [str(tmp_path / "data" / "prediction-logs" / "churn")]
    monkeypatch.setenv("ASGARD_PREDICTION_LOG_URI", "s3://serving-logs/prod/")
    assert Settings.from_env().prediction_logs("churn")[1] == "s3://serving-logs/prod/churn"
    # What the kubernetes deploy target hands its pods is what monitoring reads.
    assert Settings.from_env().cluster_prediction_log("churn") == "s3://serving-logs/prod/churn"
    monkeypatch.setenv("ASGARD_PREDICTION_LOG_URI", "/var/log/predictions")
    with pytest.raises(ValueError, match="ASGARD_PREDICTION_LOG_URI must be an s3://bucket/prefix"):
        Settings.from_env()


def test_the_kubernetes_deploy_target_reads_its_cluster_from_the_environment(monkeypatch):
    for name in ("ASGARD_KUBERNETES_CONN_ID", "ASGARD_EKS_CLUSTER_NAME", "ASGARD_SERVING_NAMESPACE"):
        monkeypatch.delenv(name, raising=False)
    settings = Settings.from_env()
    assert (settings.kubernetes_conn_id, settings.eks_cluster_name, settings.serving_namespace) == (
        "kubernetes_default",
        None,
        "asgard",
    )
    monkeypatch.setenv("ASGARD_EKS_CLUSTER_NAME", "prod-serving")
    monkeypatch.setenv("ASGARD_SERVING_NAMESPACE", "models")
    settings = Settings.from_env()
    assert (settings.eks_cluster_name, settings.serving_namespace) == ("prod-serving", "models")


def test_a_lost_tasks_timeout_is_the_schedulers_and_too_short_a_one_is_named(monkeypatch, tmp_path):
    from asgard.local.production import ProductionServices

    monkeypatch.setenv("ASGARD_HOME", str(tmp_path))
    monkeypatch.setenv("ASGARD_PROFILE", "production")
    monkeypatch.setenv("ASGARD_LOST_TASK_TIMEOUT", "45")
    env = ProductionServices(Settings.from_env()).airflow_env()
    assert env["AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT"] == "45"
    # Tasks heartbeat every 5 s: a few seconds would fail healthy tasks on a busy worker.
    monkeypatch.setenv("ASGARD_LOST_TASK_TIMEOUT", "3")
    with pytest.raises(ValueError, match="ASGARD_LOST_TASK_TIMEOUT"):
        Settings.from_env()


def test_the_postgres_admin_login_is_the_one_the_set_up_kept_on_the_machine(monkeypatch, tmp_path):
    monkeypatch.delenv("ASGARD_POSTGRES_ADMIN_URL", raising=False)
    monkeypatch.setenv("ASGARD_MACHINE_DIR", str(tmp_path))
    # A machine whose set-up did not run: Debian's own postgres role.
    assert Settings.from_env().postgres_admin_url.get_secret_value() == "postgresql://postgres@127.0.0.1:5432/postgres"
    (tmp_path / "postgres-admin-url").write_text("postgresql://asgard_admin:kept@127.0.0.1:5432/postgres\n")
    assert Settings.from_env().postgres_admin_url.get_secret_value() == (
        "postgresql://asgard_admin:kept@127.0.0.1:5432/postgres"
    )
    # A server named in the environment wins, and the password never shows in the settings' repr.
    monkeypatch.setenv("ASGARD_POSTGRES_ADMIN_URL", "postgresql://ops:named@db.internal:5432/postgres")
    settings = Settings.from_env()
    assert settings.postgres_admin_url.get_secret_value().startswith("postgresql://ops:named@db.internal")
    assert "named" not in repr(settings) and "kept" not in repr(settings)


def test_the_machines_postgres_admin_login_answers():
    """What ./asgard setup installed and started (scripts/system_services.sh) takes the admin's login over TCP."""
    import psycopg

    with psycopg.connect(Settings().postgres_admin_url.get_secret_value(), connect_timeout=5) as connection:
        assert connection.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user").fetchone() == (True,)


def test_the_settings_are_read_once_per_environment_and_again_when_it_changes(tmp_path, monkeypatch):
    """get_settings() is on every request's path: the same ASGARD_* environment and working folder give the
    settings already read; any change in either is read again (never stale)."""
    from asgard.core.settings import get_settings

    monkeypatch.setenv("ASGARD_HOME", str(tmp_path / "one"))
    first = get_settings()
    assert get_settings() is first and first.home == tmp_path / "one"
    monkeypatch.setenv("ASGARD_HOME", str(tmp_path / "two"))
    assert get_settings().home == tmp_path / "two"
    monkeypatch.setenv("ASGARD_HOME", "relative-home")  # resolved against the working folder
    monkeypatch.chdir(tmp_path)
    assert get_settings().home == tmp_path / "relative-home"
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    before = get_settings()
    assert before.home == tmp_path / "elsewhere" / "relative-home"
    monkeypatch.setenv("OTHER_VARIABLE", "x")  # not the settings': nothing to read again
    assert get_settings() is before
