"""A script's run folder: root never writes through what a script left, and no run takes another's script.

Through the real train_script DAG on the real embedded stack: a script that replaces its own file
(and plants more) with links to a canary outside and fails; running it again ("Clear", which takes
the same path as a retry) writes through none of them (the canary, dags/ and plugins/ keep their
hashes). Two run ids that shared a folder
under the old naming (``:``/``+`` and ``_``) each run their own script. A stored script changed
after its check fails the run naming its sha256. Below them, the pieces those rest on, one by one.
"""

from __future__ import annotations

import base64
import hashlib
import os
import time
import uuid
from pathlib import Path

import airflow_client.client as af
import pytest

from asgard.core.leftovers import LeftoverError, read_left_file
from asgard.core.sandbox import Limits
from asgard.core.settings import REPO_ROOT, Settings, get_settings
from asgard.local.examples import example_upload
from asgard.training.data import run_storage
from asgard.training.scripts import run_folders
from asgard.training.scripts import runner as user_scripts

DAG = "train_script"
PYTHON = Path(get_settings().script_python)

# Replaces its own file with a link to the canary (running the task again wrote the script's source
# through it, as root), plants a link to a folder, a fifo and a huge sparse file beside it, and exits
# 0: the sandbox hands a successful script's /work back to the host. It logs no model, so its run fails.
PLANTER = r"""
import os
here = os.path.abspath(__file__)
planted = ["feature_store.yaml", "folder_link", "pipe", "huge"]
found = [name for name in planted if os.path.lexists(f"/work/{name}")]
print(f"PLANTER ran as uid {os.getuid()} from a plain file: {not os.path.islink(here)}; found {found}", flush=True)
os.remove(here)
os.symlink(os.environ["CANARY"], here)
os.symlink(os.environ["CANARY"], "/work/feature_store.yaml")
os.symlink(os.environ["CANARY_FOLDER"], "/work/folder_link")
os.mkfifo("/work/pipe")
with open("/work/huge", "wb") as huge:
    huge.truncate(1 << 30)
"""
CANARY_TEXT = "# stands in for dags/x.py: every Airflow process would import what is written here\n"


def conf(name: str, source: str, **changes) -> dict:
    return {
        **example_upload(model_name=f"{name}_{uuid.uuid4().hex[:6]}", requirements=[]),
        "script_name": f"{name}.py",
        "script_content": base64.b64encode(source.encode()).decode(),
        "use_feast": False,
        **changes,
    }


def tree_hashes(folder: Path) -> dict[str, str]:
    """Each file under ``folder`` (compiled bytecode aside) by its sha256."""
    return {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file() and not path.is_symlink() and "__pycache__" not in path.parts
    }


def changed(before: dict[str, str], after: dict[str, str]) -> list[str]:
    return sorted(name for name in before.keys() | after.keys() if before.get(name) != after.get(name))


def run_script_tries(api, run_id: str) -> int:
    return api.task_instances.get_task_instance(DAG, run_id, "run_script").try_number


def wait_for_success(api, run_id: str, task_id: str, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while (state := api.task_states(DAG, run_id).get(task_id)) != "success":
        assert state not in ("failed", "upstream_failed"), api.run_error(DAG, run_id)
        assert time.monotonic() < deadline, f"{task_id} of {run_id} still {state} after {timeout:.0f}s"
        time.sleep(1.0)


def clear_run_script(api, run_id: str):
    """Clear run_script (and what follows it) through the REST API, as the UI's "Clear" does; wait for
    the run to end again."""
    before = run_script_tries(api, run_id)
    body = af.ClearTaskInstancesBody(
        dry_run=False,
        dag_run_id=run_id,
        task_ids=[af.ClearTaskInstancesBodyTaskIdsInner("run_script")],
        include_downstream=True,
        only_failed=False,
        reset_dag_runs=True,
    )
    for attempt in range(5):  # the embedded stack's SQLite may be locked by the other run for a moment
        try:
            api.task_instances.post_clear_task_instances(DAG, body)
            break
        except af.ApiException as error:
            if error.status < 500 or attempt == 4:
                raise
            time.sleep(2)
    outcome = api.wait_for_run(DAG, run_id, timeout=600)
    assert run_script_tries(api, run_id) > before, "the cleared task did not run again"
    return outcome


def run_script_logs(api, run_id: str) -> list[str]:
    """Every try's log of run_script, oldest first."""
    return [api.task_log(DAG, run_id, "run_script", try_number=n) for n in range(1, run_script_tries(api, run_id) + 1)]


@pytest.fixture
def stack(embedded_stack):
    # Every script's sandbox is handed the embedded gold layer's folder (read-only); these scripts read
    # nothing of it, so an empty one does.
    (embedded_stack.settings.data_dir / "gold").mkdir(parents=True, exist_ok=True)
    embedded_stack.api.wait_for_dag(DAG)
    embedded_stack.api.unpause(DAG)
    return embedded_stack


# --------------------------------------------------------------------------- through the real DAG
@pytest.mark.integration
def test_a_script_that_leaves_links_in_its_folder_never_has_a_rerun_write_through_them(stack, tmp_path):
    api, settings = stack.api, stack.settings
    canary = tmp_path / "x.py"
    canary.write_text(CANARY_TEXT)
    canary_folder = tmp_path / "folder"
    canary_folder.mkdir()
    (canary_folder / "kept.py").write_text(CANARY_TEXT)
    watched = {name: tree_hashes(REPO_ROOT / name) for name in ("dags", "plugins")}
    canary_before = hashlib.sha256(canary.read_bytes()).hexdigest()

    env_vars = {"CANARY": str(canary), "CANARY_FOLDER": str(canary_folder)}
    run_id = api.trigger(DAG, conf("planter", PLANTER, env_vars=env_vars))
    first = api.wait_for_run(DAG, run_id, timeout=900)  # an InputError is final: no retry of its own
    cleared = clear_run_script(api, run_id)  # "Clear" runs it again, as a retry would

    assert hashlib.sha256(canary.read_bytes()).hexdigest() == canary_before, canary.read_text()[:500]
    assert (canary_folder / "kept.py").read_text() == CANARY_TEXT
    for name, before in watched.items():
        assert not changed(before, tree_hashes(REPO_ROOT / name)), name
    logs = run_script_logs(api, run_id)
    assert len(logs) == 2
    for outcome in (first, cleared):
        assert outcome.task_states["run_script"] == "success" and outcome.task_states["register_model"] == "failed"
    for number, log in enumerate(logs, start=1):
        # Each try ran the script itself, in a folder holding nothing of an earlier try's.
        assert "PLANTER ran as uid 65534 from a plain file: True; found []" in log, (number, log[-3000:])
    # Every attempt's folder, with what the script left in it, is gone.
    assert not list(run_folders.task_folder(DAG, run_id, "run_script", settings=settings).iterdir())


@pytest.mark.integration
def test_a_run_id_that_shared_the_victims_folder_cannot_make_the_victim_run_its_script(stack):
    api = stack.api
    stamp = f"{uuid.uuid4().int % 10**6:06d}"
    # The old folder name mapped ':', '+' and '~' to '_': these two ids had one folder.
    victim_id = f"manual__2026-01-01T10:00:00.{stamp}+00:00"
    attacker_id = f"manual__2026-01-01T10_00_00.{stamp}_00_00"
    victim = "import os, sys\nprint('VICTIM SCRIPT ran for', os.environ['OWNER'], flush=True)\nsys.exit(4)\n"
    attacker = "import os, sys\nprint('ATTACKER SCRIPT ran for', os.environ['OWNER'], flush=True)\nsys.exit(5)\n"

    # The same script name: the attacker's upload lands on the very file the victim's run will run.
    api.trigger(DAG, conf("train", victim, env_vars={"OWNER": "victim"}), run_id=victim_id)
    wait_for_success(api, victim_id, "check_upload")
    # The attacker sees the victim's run id and stores its own script under the colliding one.
    api.trigger(DAG, conf("train", attacker, env_vars={"OWNER": "attacker"}), run_id=attacker_id)
    wait_for_success(api, attacker_id, "check_upload")
    api.wait_for_run(DAG, victim_id, timeout=900)
    clear_run_script(api, victim_id)  # a run_script that surely starts after the attacker's upload
    api.wait_for_run(DAG, attacker_id, timeout=900)

    stored = {
        run_id: api.task_result(DAG, run_id, "check_upload")["script_path"] for run_id in (victim_id, attacker_id)
    }
    assert stored[victim_id] != stored[attacker_id]
    for log in run_script_logs(api, victim_id):
        assert "VICTIM SCRIPT ran for victim" in log and "ATTACKER SCRIPT" not in log, log[-3000:]
    for log in run_script_logs(api, attacker_id):
        assert "ATTACKER SCRIPT ran for attacker" in log and "VICTIM SCRIPT" not in log, log[-3000:]


@pytest.mark.integration
def test_a_stored_script_changed_after_its_check_fails_the_run_naming_its_sha256(stack):
    api = stack.api
    original = "import sys\nprint('ORIGINAL SCRIPT', flush=True)\nsys.exit(4)\n"
    run_id = api.trigger(DAG, conf("checked", original))
    api.wait_for_run(DAG, run_id, timeout=900)
    upload = api.task_result(DAG, run_id, "check_upload")
    assert upload["sha256"] == hashlib.sha256(original.encode()).hexdigest()
    tampered = "print('TAMPERED SCRIPT')\n"
    Path(upload["script_path"]).write_text(tampered)

    outcome = clear_run_script(api, run_id)

    log = run_script_logs(api, run_id)[-1]
    assert outcome.state == "failed" and outcome.task_states["run_script"] == "failed"
    digest = hashlib.sha256(tampered.encode()).hexdigest()
    assert f"the stored script checked.py has sha256 {digest}, not the {upload['sha256']} recorded" in log, log[-3000:]
    assert "TAMPERED SCRIPT" not in log


# --------------------------------------------------------------------------- the pieces
def test_run_ids_that_shared_a_folder_get_folders_of_their_own(tmp_path):
    settings = Settings(home=tmp_path)
    # Pairs the old naming (every character but letters, digits, '_', '.', '-' to '_') put in one folder.
    pairs = [
        ("manual__2026-01-01T10:00:00.1+00:00", "manual__2026-01-01T10_00_00.1_00_00"),
        ("a~b", "a_b"),
        ("..", "_.."),
        ("é", "_"),
    ]
    for first, second in pairs:
        assert run_folders.run_key(DAG, first) != run_folders.run_key(DAG, second)
        assert run_folders.script_storage(DAG, first, settings) != run_folders.script_storage(DAG, second, settings)
        assert run_folders.task_folder(DAG, first, "run_script", settings=settings) != run_folders.task_folder(
            DAG, second, "run_script", settings=settings
        )
        # train_model's training set and holdout between its tasks: the same digest keeps them apart.
        assert run_storage("train_model", first, settings) != run_storage("train_model", second, settings)
    # The dag id and the run id are one key together, never a concatenation that two pairs share.
    assert run_folders.run_key("a", "b_c") != run_folders.run_key("a_b", "c")
    folder = run_folders.task_folder("../up", "../../x", "../t", 3, settings=settings)
    assert ".." not in folder.relative_to(settings.data_dir).parts and folder.name.endswith(".3")


def test_removing_a_folder_never_follows_what_a_script_left_in_it(tmp_path):
    canary = tmp_path / "canary.py"
    canary.write_text(CANARY_TEXT)
    kept = tmp_path / "kept"
    kept.mkdir()
    (kept / "inside.py").write_text(CANARY_TEXT)
    attempts = tmp_path / "runs" / "run_script"
    with run_folders.fresh_attempt(attempts, 1) as first:
        work = first / "workdir"
        work.mkdir()
        (work / "job.py").symlink_to(canary)
        (work / "folder_link").symlink_to(kept)
        os.mkfifo(work / "pipe")
        deep = work
        for _ in range(1500):  # deeper than shutil.rmtree's recursion can go
            deep = deep / "d"
            deep.mkdir()
        (deep / "link").symlink_to(kept)
    assert not first.exists()
    # A killed worker's attempt is removed by the next one, which gets a folder of its own.
    (attempts / "try-1").mkdir()
    (attempts / "try-1" / "job.py").symlink_to(canary)
    with run_folders.fresh_attempt(attempts, 2) as second:
        assert sorted(os.listdir(attempts)) == ["try-2"] and not list(second.iterdir())
    assert canary.read_text() == CANARY_TEXT and (kept / "inside.py").read_text() == CANARY_TEXT
    assert not list(attempts.iterdir())
    # A folder that became a link is removed as a link.
    (tmp_path / "work").symlink_to(kept)
    run_folders.make_fresh(tmp_path / "work")
    assert (tmp_path / "work").is_dir() and not (tmp_path / "work").is_symlink()
    assert (kept / "inside.py").read_text() == CANARY_TEXT
    # The platform creates its files: anything already at the name (a link a script made) is refused.
    (tmp_path / "work" / "job.py").symlink_to(canary)
    with pytest.raises(FileExistsError):
        run_folders.write_new_file(tmp_path / "work" / "job.py", b"print('root writes here')")
    assert canary.read_text() == CANARY_TEXT


def test_what_a_sandbox_left_is_read_only_when_it_is_a_plain_file_of_a_sane_size(tmp_path):
    left = tmp_path / "output"
    left.mkdir()
    (left / "predictions.parquet").write_bytes(b"rows")
    (tmp_path / "secret").write_text("the admin password")
    (left / "linked").symlink_to(tmp_path / "secret")
    (left / "through").symlink_to(tmp_path)
    os.mkfifo(left / "pipe")
    os.mknod(left / "device", 0o600 | 0o020000, os.makedev(1, 3))  # a character device: /dev/null's
    with open(left / "huge", "wb") as huge:
        huge.truncate(1 << 30)
    (left / "folder").mkdir()

    assert read_left_file(left, "predictions.parquet", max_bytes=1000) == b"rows"
    refusals = {
        "linked": "linked in .* is a symbolic link, not a regular file: refused",
        "through/secret": "through in .* is a symbolic link, not a regular folder: refused",
        "pipe": "is a fifo, not a regular file",
        "device": "is a character device, not a regular file",
        "huge": "huge in .* is 1073741824 bytes, over the 1000 byte limit",
        "folder": "is a folder, not a regular file",
        "missing": "missing was not left in",
    }
    for name, message in refusals.items():  # the fifo refused without being opened: nothing blocks
        with pytest.raises(LeftoverError, match=message):
            read_left_file(left, name, max_bytes=1000)
    with pytest.raises(ValueError):
        read_left_file(left, "../secret", max_bytes=1000)


def test_the_runner_gives_every_run_a_new_work_folder_and_writes_through_no_link(tmp_path):
    canary = tmp_path / "canary.py"
    canary.write_text(CANARY_TEXT)
    work = tmp_path / "work"
    work.mkdir()
    (work / "job.py").symlink_to(canary)  # what an earlier run of a script left
    (work / "stale").write_text("from the last run")
    script = user_scripts.UserScript("job.py", "import os\nprint(sorted(os.listdir('/work')))\n")
    env = user_scripts.script_environment(PYTHON, {name: "x" for name in user_scripts.INJECTED}, {})
    lines: list[str] = []
    user_scripts.run_script(script, PYTHON, work, env, Limits(timeout_seconds=60), output=lines.append)
    assert lines == ["['job.py']"]
    assert canary.read_text() == CANARY_TEXT
