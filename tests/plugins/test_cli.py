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


class _Answering:
    """A real HTTP server on ``port`` (in a thread) answering every request with the next of ``statuses``
    (the last one repeated) and a JSON body, after closing the connection unanswered on the first ``drops``
    requests (as a server killed while answering does); how many requests it got."""

    def __init__(self, port: int, statuses: tuple[int, ...] = (200,), drops: int = 0) -> None:
        import http.server
        import threading

        owner, self.requests = self, 0

        class Handler(http.server.BaseHTTPRequestHandler):
            def answer(self) -> None:
                self.rfile.read(int(self.headers.get("content-length") or 0))
                owner.requests += 1
                if owner.requests <= drops:
                    self.close_connection = True
                    return
                status = statuses[min(owner.requests - 1 - drops, len(statuses) - 1)]
                body = b'{"status": "healthy", "predictions": [1]}'
                self.send_response(status)
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = answer

            def log_message(self, *args) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_a_server_that_answered_and_then_refuses_is_waited_for_as_it_restarts():
    import threading
    import time

    port = unused_port()
    server = _Answering(port)
    client = cli.MlopsClient(f"http://127.0.0.1:{port}", "a-token")
    assert client.get("/health") == {"status": "healthy", "predictions": [1]}
    server.close()  # crashed: connections are refused until its supervisor starts it again
    restarted: list[_Answering] = []
    timer = threading.Timer(2.0, lambda: restarted.append(_Answering(port)))
    timer.start()
    started = time.monotonic()
    try:
        assert client.post("/monitoring", {"a": 1}) == {"status": "healthy", "predictions": [1]}
        assert time.monotonic() - started >= 1.5  # refused, waited, then answered by the new server
        assert restarted[0].requests == 1  # the POST, sent once: the refused tries sent nothing
    finally:
        timer.join()
        for server in restarted:
            server.close()


def test_a_get_is_sent_again_when_the_connection_drops_unanswered_and_a_post_is_not():
    port = unused_port()
    server = _Answering(port, drops=0)
    try:
        client = cli.MlopsClient(f"http://127.0.0.1:{port}", "a-token")
        assert client.get("/health") == {"status": "healthy", "predictions": [1]}
    finally:
        server.close()
    server = _Answering(port, drops=2)  # restarted; killed twice more while answering
    try:
        assert client.get("/jobs/a") == {"status": "healthy", "predictions": [1]}
        assert server.requests == 3  # reading twice changes nothing
    finally:
        server.close()
    server = _Answering(port, drops=1)
    try:
        # The dropped POST may have been acted on: sending it again could start a second job.
        with pytest.raises(cli.CliError, match=r"cannot reach .*: Server disconnected"):
            client.post("/training/upload", {"a": 1})
        assert server.requests == 1
    finally:
        server.close()


def test_predict_waits_out_a_router_whose_model_is_coming_back_and_names_one_that_does_not():
    from asgard.local.live_traffic import predict
    from asgard.local.stages import MainJobError

    port = unused_port()
    server = _Answering(port, (502, 503, 200))  # the router, while the serving container is reconciled
    try:
        assert predict(f"http://127.0.0.1:{port}", {"inputs": {}}) == {"status": "healthy", "predictions": [1]}
        assert server.requests == 3
    finally:
        server.close()
    with pytest.raises(MainJobError, match=r"/predict could not be reached: .* \(for 2 s\)"):
        predict(f"http://127.0.0.1:{port}", {"inputs": {}}, within=2.0)  # nothing listens
    server = _Answering(port, (502,))
    try:
        with pytest.raises(MainJobError, match=r"/predict answered 502: .* \(for 2 s\)"):
            predict(f"http://127.0.0.1:{port}", {"inputs": {}}, within=2.0)
    finally:
        server.close()
