"""What a sandbox or a serving container leaves where root reads: regular files only, no link followed.

The serving bundler runs the model's own code, and a serving container runs it on every request; the
review that found it planted a link to /etc/shadow in the bundle (copied into the pushed image), a
dangling link where root wrote the model's requirements (a file created anywhere), and a fifo and a
link to /dev/zero in the container's prediction log folder (the monitor blocked, or read forever).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from asgard.core.leftovers import LeftoverError, copy_left_tree
from asgard.monitoring.thresholds import MonitoringError
from asgard.monitoring.windows import _local_log_batches
from asgard.serving.image import logged_requirements


def bundle_output(folder: Path) -> Path:
    """What an honest bundler leaves: folders and regular files."""
    (folder / "model").mkdir(parents=True)
    (folder / "model" / "model.onnx").write_bytes(b"onnx bytes")
    (folder / "serving.json").write_text('{"flavor": "onnx"}')
    (folder / "run.sh").write_text("#!/bin/sh\n")
    (folder / "run.sh").chmod(0o4755)  # a setuid bit does not survive the copy
    return folder


def test_an_honest_bundle_is_copied_as_plain_files(tmp_path):
    source = bundle_output(tmp_path / "output")
    context = tmp_path / "context"
    copied = copy_left_tree(source, context, max_bytes=1024)
    assert copied == len(b"onnx bytes") + len('{"flavor": "onnx"}') + len("#!/bin/sh\n")
    assert (context / "model" / "model.onnx").read_bytes() == b"onnx bytes"
    assert oct((context / "run.sh").stat().st_mode & 0o7777) == "0o755"


@pytest.mark.parametrize(
    "plant, refused",
    [
        (lambda folder: (folder / "model" / "leak").symlink_to("/etc/shadow"), "model/leak is a symbolic link"),
        (lambda folder: (folder / "requirements.txt").symlink_to("/nonexistent/dags/x.py"), "a symbolic link"),
        (lambda folder: (folder / "linked").symlink_to("/etc", target_is_directory=True), "linked is a symbolic link"),
        (lambda folder: os.mkfifo(folder / "model" / "pipe"), "model/pipe is a fifo"),
        (lambda folder: (folder / "big.bin").write_bytes(b"x" * 2048), "more than 1024 bytes"),
    ],
)
def test_what_a_bundler_plants_is_refused_and_nothing_follows_it(tmp_path, plant, refused):
    source = bundle_output(tmp_path / "output")
    plant(source)
    with pytest.raises(LeftoverError, match=refused):
        copy_left_tree(source, tmp_path / "context", max_bytes=1024)
    assert not Path("/nonexistent/dags/x.py").exists()
    assert not [path for path in (tmp_path / "context").rglob("*") if path.is_symlink()]


def test_the_image_installs_the_models_pins_as_checked_never_its_file(tmp_path):
    """A file of comments passes the requirement rule; with an encoding cookie it was Python code."""
    native = tmp_path / "native"
    native.mkdir()
    (native / "requirements.txt").write_text("# -*- coding: utf-7 -*-\n# +AAo-import os\nnumpy==2.3.5\n\n")
    assert logged_requirements(native) == ["numpy==2.3.5"]
    (native / "requirements.txt").write_text("evil @ https://example.invalid/evil.whl\n")
    with pytest.raises(Exception, match="not a plain requirement"):
        logged_requirements(native)
    assert logged_requirements(tmp_path) is None


def test_the_monitor_reads_the_serving_log_folder_without_following_what_the_model_left(tmp_path):
    folder = tmp_path / "prediction-logs"
    folder.mkdir()
    honest = folder / "predictions-1765000000000-7-abcd1234.jsonl"
    honest.write_text('{"row": 1}\n')
    assert list(_local_log_batches(folder, 0)) == ['{"row": 1}\n']
    for name, plant in (
        ("predictions-1765000000001-7-link.jsonl", lambda path: path.symlink_to("/etc/shadow")),
        ("predictions-1765000000002-7-zero.jsonl", lambda path: path.symlink_to("/dev/zero")),
        ("predictions-1765000000003-7-fifo.jsonl", os.mkfifo),
        ("predictions-not-a-batch.jsonl", lambda path: path.write_text("{}")),
    ):
        plant(folder / name)
        with pytest.raises(MonitoringError, match="refused"):
            list(_local_log_batches(folder, 0))
        (folder / name).unlink()
