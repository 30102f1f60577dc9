"""The documentation site (issue 56): built strict from the repository, its reference generated from the
code: every DAG Param, every route of the REST APIs, every setting and every command of ``./asgard`` is in it."""

from __future__ import annotations

import argparse
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


def test_the_pages_include_the_readmes_sections_and_the_lifecycle_diagram(site):
    started = (site / "getting-started" / "index.html").read_text()
    assert "./asgard run" in started and "The other commands of the same entry point" in started
    assert "who may do what" in (site / "concepts" / "teams" / "index.html").read_text()
    assert 'class="mermaid"' in (site / "concepts" / "lifecycle" / "index.html").read_text()
