"""The documentation site (issue 56): built strict from the repository, its reference generated from the
code: every DAG Param, every route of the REST APIs, every setting and every command of ``./asgard`` is in it."""

from __future__ import annotations

import argparse
import hashlib
import re

import pytest

from asgard.core.settings import ENV_VARS
from asgard.local import docs
from asgard.local.__main__ import build_parser


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    folder = tmp_path_factory.mktemp("docs-site")
    built = docs.build(folder)
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    # Strict: any warning would have failed the build; none is printed either.
    assert "WARNING" not in built.stderr, built.stderr
    return folder


def _page(site, name: str) -> str:
    return (site / "reference" / name / "index.html").read_text()


def test_every_dag_param_is_in_the_reference(site):
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(str(docs.DAGS_FOLDER))
    page = (docs.REFERENCE / "dag-params.md").read_text()
    sections = dict(re.findall(r"^## `(\w+)`\n(.*?)(?=^## |\Z)", page, flags=re.MULTILINE | re.DOTALL))
    assert set(sections) == set(bag.dag_ids), sorted(set(bag.dag_ids) ^ set(sections))
    for dag_id, dag in bag.dags.items():
        for name in dag.params:
            assert f"| `{name}` |" in sections[dag_id], (dag_id, name)
    assert "<code>model_name</code>" in _page(site, "dag-params")


def test_every_setting_and_every_command_is_in_the_reference(site):
    settings, commands = _page(site, "settings"), _page(site, "cli")
    missing = [variable for variable in ENV_VARS if f"<code>{variable}</code>" not in settings]
    assert not missing, missing

    def paths(parser, prefix):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, command in action.choices.items():
                    yield f"{prefix} {name}".strip()
                    yield from paths(command, f"{prefix} {name}")

    found = list(paths(build_parser(), ""))
    assert {"run", "test", "docs", "gold load", "features register"} - {"test"} <= set(found)
    for path in found:
        assert f"<code>./asgard {path}</code>" in commands, path


def test_every_route_of_the_rest_apis_is_in_the_reference(site):
    from asgard.api import feast, mlops

    page = _page(site, "rest-api")
    for prefix, app in (("/mlops", mlops.create_app()), ("/feast", feast.create_app())):
        routes = [(method.upper(), path) for path, methods in app.openapi()["paths"].items() for method in methods]
        assert len(routes) > 5, prefix
        for method, path in routes:
            assert f"<code>{method} {prefix}{path}</code>" in page, (method, path)
        # Each body and answer schema, field by field, under a heading the routes' table links to.
        schemas = app.openapi()["components"]["schemas"]
        assert "TrainModelRequest" in schemas or "FeatureViewRequest" in schemas or len(schemas) > 2, sorted(schemas)
        for name, schema in schemas.items():
            anchor = f"{prefix.strip('/')}-{name.lower()}"
            section = page.split(f'id="{anchor}"', 1)
            assert len(section) == 2 and f'href="#{anchor}"' in page, (prefix, name)
            for field in schema.get("properties", {}):
                assert f"<code>{field}</code>" in section[1].split("<h3", 1)[0], (prefix, name, field)


def test_the_pages_include_the_readmes_sections_and_the_lifecycle_diagram(site):
    started = (site / "getting-started" / "index.html").read_text()
    assert "./asgard run" in started and "The other commands of the same entry point" in started
    assert "who may do what" in (site / "concepts" / "teams" / "index.html").read_text()
    assert 'class="mermaid"' in (site / "concepts" / "lifecycle" / "index.html").read_text()


PICTURES = ("trigger-form", "run-grid", "models-page", "drift-report", "approval-form")


def test_the_sites_screenshots_are_the_ones_the_browser_tests_saved(site):
    from datetime import UTC, datetime

    from asgard.local import screenshots

    manifest = screenshots.read_manifest(site / "screenshots")
    assert set(PICTURES) <= set(manifest), sorted(manifest)
    page = (site / "getting-started" / "index.html").read_text()
    shown = dict(re.findall(r'<img alt="([^"]*)" src="\.\./screenshots/([\w-]+\.png)"', page))
    assert sorted(shown.values()) == sorted(f"{name}.png" for name in PICTURES), shown
    for alt, file in shown.items():
        entry = next(entry for entry in manifest.values() if entry["file"] == file)
        data = (site / "screenshots" / file).read_bytes()
        assert hashlib.sha256(data).hexdigest() == entry["sha256"] and len(data) == entry["bytes"], file
        assert screenshots.png_size(data) == (entry["width"], entry["height"]) == screenshots.WINDOW, file
        assert datetime.fromisoformat(entry["taken_at"]) <= datetime.now(UTC), entry
        # The picture is captioned with the page the test named, and the test saw what it shows there.
        assert alt == entry["page"] and entry["shows"] and entry["test"].startswith("tests/"), entry


def test_a_screenshot_that_is_not_the_saved_one_fails_the_build(site, tmp_path):
    import shutil
    import subprocess
    import sys

    docs_copy = tmp_path / "docs"
    shutil.copytree(docs.REPO_ROOT / "docs", docs_copy, ignore=shutil.ignore_patterns(".lock"))
    with (docs_copy / "screenshots" / "models-page.png").open("ab") as retouched:
        retouched.write(b"\0")
    config = tmp_path / "mkdocs.yml"
    config.write_text(
        f"INHERIT: {docs.REPO_ROOT / 'mkdocs.yml'}\ndocs_dir: {docs_copy}\nsite_dir: {tmp_path / 'site'}\n"
        f"hooks:\n  - {docs.REPO_ROOT / 'plugins/asgard/local/screenshots.py'}\n"
    )
    built = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(config)],
        cwd=docs.REPO_ROOT, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert built.returncode != 0
    assert "models-page.png: not the file the browser test saved" in built.stderr, built.stderr[-3000:]
