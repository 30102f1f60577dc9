"""The CLI's own refusals: what it cannot send, and a server it cannot reach, are named (no traceback)."""

from __future__ import annotations

import socket

import pytest

from asgard.local import cli
from asgard.local.__main__ import main


def unused_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_an_unreachable_server_is_named(monkeypatch, capsys):
    monkeypatch.setenv("ASGARD_API_TOKEN", "a-token")
    url = f"http://127.0.0.1:{unused_port()}"
    assert main(["models", "--url", url]) == 1
    assert f"asgard: cannot reach {url}" in capsys.readouterr().err


def test_a_login_to_an_unreachable_server_is_named(monkeypatch, capsys):
    monkeypatch.delenv("ASGARD_API_TOKEN", raising=False)
    monkeypatch.setenv("ASGARD_API_USERNAME", "admin")
    monkeypatch.setenv("ASGARD_API_PASSWORD", "secret")
    url = f"http://127.0.0.1:{unused_port()}"
    assert main(["history", "churn_predictor", "--url", url]) == 1
    error = capsys.readouterr().err
    assert f"asgard: cannot reach the Airflow API server at {url}" in error and "secret" not in error


def test_a_missing_script_and_a_bad_env_are_refused_before_anything_is_sent(tmp_path, monkeypatch, capsys):
    with pytest.raises(cli.CliError, match=r"nope\.py: no such file"):
        cli.upload_request(
            tmp_path / "nope.py",
            model_name="m",
            experiment_name="e",
            requirements=[],
            timeout=60,
            env_vars={},
            use_feast=False,
        )
    script = tmp_path / "train.py"
    script.write_text("print('hi')\n")
    monkeypatch.setenv("ASGARD_API_TOKEN", "a-token")
    url = f"http://127.0.0.1:{unused_port()}"
    argv = ["upload", str(script), "--model-name", "m", "--experiment", "e", "--env", "NOEQUALS", "--url", url]
    assert main(argv) == 1
    assert "--env 'NOEQUALS': expected KEY=VALUE" in capsys.readouterr().err


def test_this_installs_admin_password_is_never_sent_to_another_url(monkeypatch, capsys, tmp_path):
    """Without a token or a login of its own, the client logs in as this install's admin only at this install."""
    for name in ("ASGARD_API_TOKEN", "ASGARD_API_USERNAME", "ASGARD_API_PASSWORD"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("ASGARD_HOME", str(tmp_path))
    (tmp_path / "airflow").mkdir()
    (tmp_path / "airflow" / "simple_auth_manager_passwords.json").write_text('{"admin": "local-admin-secret"}')
    elsewhere = f"http://127.0.0.1:{unused_port()}"
    assert main(["models", "--url", elsewhere]) == 1
    error = capsys.readouterr().err
    assert "is not this install's Airflow" in error and "local-admin-secret" not in error
