"""The user-script runner for real: real sandboxes, real limits, a real environment build with uv."""

from __future__ import annotations

import base64
import tarfile
import threading
import uuid
from pathlib import Path

import psutil
import pytest

from asgard.core.sandbox import Limits
from asgard.core.settings import get_settings
from asgard.training.scripts import runner as user_scripts
from asgard.training.scripts.runner import ScriptEnvironments, ScriptError, UserScript

PYTHON = Path(get_settings().script_python)
INJECTED = {name: f"injected-{name}" for name in user_scripts.INJECTED}


def b64(source: str) -> str:
    return base64.b64encode(source.encode()).decode()


DEFAULT_LIMITS = Limits(timeout_seconds=60)


def run(source: str, tmp_path: Path, limits: Limits = DEFAULT_LIMITS, env_vars=None, lines=None):
    script = user_scripts.decode_script("job.py", b64(source))
    env = user_scripts.script_environment(PYTHON, INJECTED, env_vars or {})
    output = lines.append if lines is not None else (lambda line: None)
    return user_scripts.run_script(script, PYTHON, tmp_path / "work", env, limits, output=output)


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("job.py", "not base64 at all!", "script_content is not valid base64"),
        ("job.py", b64("def broken(:\n    pass\n"), "syntax error in job.py, line 1"),
        ("job.sh", b64("print(1)"), "script_name 'job.sh' must be a file name ending in .py"),
        ("job.py", b64("x = 1\n" * 200_000), "larger than the 1000000 byte limit"),
        ("job.py", base64.b64encode(b"\xff\xfe print").decode(), "script is not UTF-8 text"),
        ("pickle.py", b64("print(1)"), "script_name 'pickle.py' would shadow Python's own pickle module"),
    ],
    ids=["bad-base64", "syntax-error", "bad-name", "too-large", "not-text", "shadows-stdlib"],
)
def test_bad_uploads_are_refused_before_anything_runs(name, content, message):
    with pytest.raises(ScriptError, match=message.replace("(", r"\(").replace(")", r"\)")):
        user_scripts.decode_script(name, content)


def test_output_is_streamed_and_the_exit_code_checked(tmp_path):
    lines: list[str] = []
    outcome = run("print('hello'); print('world')", tmp_path, lines=lines)
    assert outcome.exit_code == 0 and lines == ["hello", "world"]
    with pytest.raises(ScriptError, match=r"job.py exited with code 3; last output:\nabout to fail"):
        run("print('about to fail'); raise SystemExit(3)", tmp_path)


def test_environment_holds_only_the_contract_and_the_users_variables(tmp_path, monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "platform-secret")
    monkeypatch.setenv("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", "postgresql://secret")
    monkeypatch.setenv("AIRFLOW_CONN_MLFLOW_DEFAULT", '{"password": "secret"}')
    source = """
import os, json
print(json.dumps(sorted(os.environ)))
leaks = [k for k in os.environ if k.startswith(("AIRFLOW", "AWS_", "ASGARD_")) or "secret" in os.environ[k]]
raise SystemExit(1 if leaks else 0)
"""
    lines: list[str] = []
    run(source, tmp_path, env_vars={"KEY": "value"}, lines=lines)
    seen = set(__import__("json").loads(lines[0]))
    assert set(user_scripts.INJECTED) | {"KEY"} <= seen
    assert not [k for k in seen if k.startswith(("AIRFLOW", "AWS_"))]


def test_users_may_not_set_platform_or_secret_variables():
    with pytest.raises(ScriptError, match="env_vars may not set AWS_SECRET_ACCESS_KEY, MLFLOW_TRACKING_URI"):
        user_scripts.check_env_vars({"AWS_SECRET_ACCESS_KEY": "x", "MLFLOW_TRACKING_URI": "y", "OK": "z"})


def test_timeout_kills_the_whole_process_tree(tmp_path):
    marker = f"600.{uuid.uuid4().int % 10**9}"  # a sleep no other process on this host runs
    source = f"""
import subprocess, time
subprocess.Popen(["sleep", "{marker}"], start_new_session=True)
print("started", flush=True)
time.sleep(600)
"""
    with pytest.raises(ScriptError, match=r"job\.py timed out after 3s; it and its processes were killed"):
        run(source, tmp_path, Limits(timeout_seconds=3))
    assert not [p.pid for p in psutil.process_iter(["cmdline"]) if marker in (p.info["cmdline"] or [])]


def test_a_memory_hog_fails_on_its_limit_and_not_the_worker(tmp_path):
    with pytest.raises(ScriptError, match=r"ran out of its memory limit \(512 MB\)"):
        run("block = bytearray(4 * 1024 ** 3)", tmp_path, Limits(timeout_seconds=60, memory_mb=512))


def test_endless_output_is_capped_and_stopped(tmp_path):
    lines: list[str] = []
    with pytest.raises(ScriptError, match="wrote more than 100000 bytes of output and was stopped"):
        run("while True: print('x' * 99)", tmp_path, Limits(timeout_seconds=60, max_output_bytes=100_000), lines=lines)
    assert sum(len(line) + 1 for line in lines) <= 100_000


def test_an_uninstallable_requirement_fails_naming_it_and_leaves_no_environment(tmp_path):
    environments = ScriptEnvironments(tmp_path / "envs")
    with pytest.raises(ScriptError, match="could not install the requirements") as raised:
        environments.ensure(["asgard-no-such-package-for-tests==0.0.1"], progress=lambda _: None)
    assert "asgard-no-such-package-for-tests" in str(raised.value)
    assert [p.name for p in (tmp_path / "envs").iterdir() if not p.name.endswith(".lock")] == []


def test_a_requirement_that_only_builds_from_source_never_runs_its_build(tmp_path, monkeypatch):
    """Its build would read the worker's AWS credentials: only wheels are installed, so it never runs."""
    marker = tmp_path / "build-ran"
    setup = f"import os\nopen({str(marker)!r}, 'w').write(open(os.path.expanduser('~/.aws/credentials')).read())\n"
    release = tmp_path / "sdists"
    source = tmp_path / "asgard_probe_sdist-1.0"
    source.mkdir(parents=True)
    (source / "setup.py").write_text(
        setup + "from setuptools import setup\nsetup(name='asgard-probe-sdist', version='1.0')\n"
    )
    (source / "PKG-INFO").write_text("Metadata-Version: 2.1\nName: asgard-probe-sdist\nVersion: 1.0\n")
    release.mkdir()
    with tarfile.open(release / "asgard_probe_sdist-1.0.tar.gz", "w:gz") as archive:
        archive.add(source, arcname=source.name)
    monkeypatch.setenv("UV_FIND_LINKS", str(release))
    with pytest.raises(ScriptError, match="asgard-probe-sdist") as raised:
        ScriptEnvironments(tmp_path / "envs").ensure(["asgard-probe-sdist==1.0"], progress=lambda _: None)
    assert "could not install the requirements" in str(raised.value)
    assert not marker.exists()


def test_concurrent_runs_share_one_build(tmp_path):
    environments = ScriptEnvironments(tmp_path / "envs")
    messages: list[str] = []
    results: list[Path] = []

    def ensure() -> None:
        results.append(environments.ensure([], progress=messages.append))

    threads = [threading.Thread(target=ensure) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results[0] == results[1] and results[0].exists()
    assert sum(message.startswith("built environment") for message in messages) == 1
    assert any("reusing" in message for message in messages)
    # The environment has the platform's MLflow client, pinned, and nothing of Airflow.
    script = UserScript(
        "probe.py", "import mlflow, importlib.util as u; print(mlflow.__version__, u.find_spec('airflow'))"
    )
    lines: list[str] = []
    env = user_scripts.script_environment(results[0], INJECTED, {})
    user_scripts.run_script(
        script, results[0], tmp_path / "probe", env, Limits(timeout_seconds=120), output=lines.append
    )
    import mlflow

    assert lines == [f"{mlflow.__version__} None"]
