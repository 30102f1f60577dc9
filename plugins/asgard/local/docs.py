"""``./asgard docs``: the documentation site (``mkdocs.yml``, ``docs/``).

Its reference pages are written from the code at each build, so that they cannot drift from what runs:
every DAG's Params from the DAGs themselves (parsed as Airflow parses them, in a process of their own
with a throwaway ``AIRFLOW_HOME``), every route of the REST APIs from their OpenAPI schemas, every
``ASGARD_*`` setting from the settings classes (with the
comment above each field), every command and option from ``./asgard``'s parser. The build is strict
(``mkdocs.yml``): a broken link, a missing page or a missing README section fails it.
"""

from __future__ import annotations

import argparse
import functools
import inspect
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from asgard.core.settings import ENV_PREFIX, REPO_ROOT, Settings

REFERENCE = REPO_ROOT / "docs" / "reference"
DAGS_FOLDER = REPO_ROOT / "dags"


def write_reference(folder: Path = REFERENCE, parser: argparse.ArgumentParser | None = None) -> list[Path]:
    """The generated reference pages, written into ``folder``."""
    from asgard.local.__main__ import build_parser

    pages = {
        "dag-params.md": dag_params_page(),
        "settings.md": settings_page(),
        "cli.md": cli_page(parser or build_parser()),
        "rest-api.md": rest_api_page(),
    }
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in pages.items():
        (folder / name).write_text(text)
    return [folder / name for name in pages]


def build(site: Path | None = None) -> subprocess.CompletedProcess:
    """The reference pages, then the site (strict), into ``site`` (default: mkdocs.yml's site_dir)."""
    write_reference()
    command = [sys.executable, "-m", "mkdocs", "build", "--strict", "--clean", "-f", str(REPO_ROOT / "mkdocs.yml")]
    command += ["-d", str(site)] if site else []
    return subprocess.run(command, env=_quiet(), capture_output=True, text=True, check=False)


def serve(host: str, port: int) -> int:
    """The site on ``host:port``, rebuilt as its pages change."""
    write_reference()
    address = f"{host}:{port}"
    command = [sys.executable, "-m", "mkdocs", "serve", "-f", str(REPO_ROOT / "mkdocs.yml"), "-a", address]
    return subprocess.run(command, env=_quiet(), check=False).returncode


def _quiet() -> dict[str, str]:
    """The environment of mkdocs without Material's banner about its successor (not a build warning)."""
    return {**os.environ, "NO_MKDOCS_2_WARNING": "1"}


# --------------------------------------------------------------------------- DAG Params
def dag_params_page() -> str:
    """Each DAG's Params, parsed as Airflow parses them."""
    dags = _parsed()["dag-params"]
    lines = ["# DAG Params", "", "Each DAG's conf, as its trigger form shows it and as a `conf` is checked.", ""]
    for dag_id, (summary, params) in sorted(dags.items()):
        lines += [f"## `{dag_id}`", "", summary, ""]
        if not params:
            lines += ["No Params: it needs no conf.", ""]
            continue
        lines += ["| Param | type | default | what it is |", "|---|---|---|---|"]
        for name, param in params.items():
            cells = (f"`{name}`", _type(param["schema"]), f"`{param['default']}`", param["description"])
            lines.append("| " + " | ".join(_cell(cell) for cell in cells) + " |")
        lines.append("")
    return "\n".join(lines)


def rest_api_page() -> str:
    """Every route of the platform's REST APIs (``/mlops``, ``/feast``), with the body each takes and the
    answer it gives, and every one of those schemas' fields, from their OpenAPI schemas."""
    apis = _parsed()["rest-api"]
    lines = [
        "# REST API",
        "",
        "The platform's APIs, inside Airflow's API server (its login: a bearer token or the UI's session).",
        "Each is also described by its own OpenAPI schema, served at `<prefix>/openapi.json`. A body that",
        "does not match its schema is a 422 naming the field.",
        "",
    ]
    for prefix, api in apis.items():
        lines += [f"## `{prefix}`", "", "| request | body | answer | what it does |", "|---|---|---|---|"]
        for route in api["routes"]:
            body, answer = (_schema_link(prefix, route[key]) for key in ("body", "answer"))
            request = f"{route['method']} {prefix}{route['path']}"
            lines.append(f"| `{request}` | {body} | {route['status']} {answer} | {_cell(route['summary'])} |")
        lines.append("")
        for name, schema in api["schemas"].items():
            lines += [f"### `{prefix}` {name}", ""]
            if schema.get("description"):
                lines += [_cell(schema["description"]), ""]
            lines += ["| field | type | required | default | meaning |", "|---|---|---|---|---|"]
            required = set(schema.get("required", []))
            for field, spec in schema.get("properties", {}).items():
                default = f"`{json.dumps(spec['default'])}`" if "default" in spec else ""
                kind = _cell(_schema_type(prefix, spec))
                meaning = _cell(spec.get("description", spec.get("title", "")))
                lines.append(f"| `{field}` | {kind} | {'yes' if field in required else ''} | {default} | {meaning} |")
            lines.append("")
    return "\n".join(lines)


def _schema_link(prefix: str, name: str | None) -> str:
    if not name:
        return "—"
    return f"[{name}](#{prefix.strip('/')}-{name.lower()})"


def _schema_type(prefix: str, spec: dict[str, Any]) -> str:
    """A field's type as a reader says it: ``integer``, ``list of string``, ``DataSource`` (linked), or
    several of them (``string or null``)."""
    if "$ref" in spec:
        return _schema_link(prefix, spec["$ref"].rsplit("/", 1)[-1])
    if "anyOf" in spec or "oneOf" in spec:
        return " or ".join(_schema_type(prefix, option) for option in spec.get("anyOf", spec.get("oneOf", [])))
    if "enum" in spec:
        return " \\| ".join(f"`{value}`" for value in spec["enum"])
    kind = spec.get("type", "any")
    if kind == "array":
        return f"list of {_schema_type(prefix, spec.get('items', {}))}"
    if kind == "object" and "additionalProperties" in spec and isinstance(spec["additionalProperties"], dict):
        return f"map of {_schema_type(prefix, spec['additionalProperties'])}"
    return kind


@functools.cache
def _parsed() -> dict[str, Any]:
    """What a process of its own reads of the DAGs and the APIs (Airflow reads its configuration once, and
    this one's is a throwaway)."""
    with tempfile.TemporaryDirectory(prefix="asgard-docs-airflow-") as home:
        env = {
            **os.environ,
            "AIRFLOW_HOME": home,
            "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS_FOLDER),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            # The DAG files import the platform's packages, as Airflow's processes find them.
            "PYTHONPATH": os.pathsep.join([str(REPO_ROOT / "plugins"), str(REPO_ROOT / "include")]),
        }
        found = subprocess.run(
            [sys.executable, "-m", "asgard.local.docs", "read"], env=env, capture_output=True, text=True, check=False
        )
    if found.returncode != 0:
        raise RuntimeError(f"could not read the DAGs and the APIs for the reference: {found.stderr[-2000:]}")
    return json.loads(found.stdout.splitlines()[-1])


def _read_rest_api() -> dict[str, dict[str, Any]]:
    """Each API's routes (method, path, summary, the body's and the answer's schema) and the schemas they
    name (run in the process :func:`_parsed` starts)."""
    from asgard.api import feast, mlops

    def schema_name(content: dict[str, Any]) -> str | None:
        ref = content.get("application/json", {}).get("schema", {}).get("$ref", "")
        return ref.rsplit("/", 1)[-1] or None

    found = {}
    for prefix, app in (("/mlops", mlops.create_app()), ("/feast", feast.create_app())):
        spec = app.openapi()
        routes = []
        for path, operations in spec["paths"].items():
            for method, operation in operations.items():
                status, answer = next(
                    ((code, reply) for code, reply in operation.get("responses", {}).items() if code.startswith("2")),
                    ("", {}),
                )
                routes.append({
                    "method": method.upper(),
                    "path": path,
                    "summary": operation.get("summary", ""),
                    "body": schema_name(operation.get("requestBody", {}).get("content", {})),
                    "status": status,
                    "answer": schema_name(answer.get("content", {})),
                })  # fmt: skip
        schemas = spec.get("components", {}).get("schemas", {})
        found[prefix] = {"routes": routes, "schemas": dict(sorted(schemas.items()))}
    return found


def _read_dag_params() -> dict[str, Any]:
    """Every DAG's first doc line and Params (run in the process :func:`_parsed` starts)."""
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(str(DAGS_FOLDER))
    if bag.import_errors:
        raise RuntimeError(f"DAG import errors: {bag.import_errors}")
    found = {}
    for dag_id, dag in bag.dags.items():
        params = {}
        for name in dag.params:
            param = dag.params.get_param(name)
            default = param.value if param.has_value else None
            params[name] = {
                "schema": {k: v for k, v in param.schema.items() if k != "description"},
                "default": json.dumps(default, default=str),
                "description": param.description or "",
            }
        summary = next((line.strip("# ") for line in (dag.doc_md or "").strip().splitlines() if line.strip()), "")
        found[dag_id] = (summary, params)
    return found


def _type(schema: dict[str, Any]) -> str:
    kind = schema.get("type", "any")
    kind = " or ".join(kind) if isinstance(kind, list) else str(kind)
    if "enum" in schema:
        kind += ": " + ", ".join(f"`{value}`" for value in schema["enum"])
    bounds = [f"{key} {schema[key]}" for key in ("minimum", "maximum", "minLength", "maxLength") if key in schema]
    return kind + (f" ({', '.join(bounds)})" if bounds else "")


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


# --------------------------------------------------------------------------- settings
def settings_page() -> str:
    """Every ``ASGARD_*`` variable: its type, its default and the comment above its field."""
    comments = {**_field_comments(Settings.__mro__[1]), **_field_comments(Settings)}
    lines = [
        "# Settings",
        "",
        "Every setting is an environment variable (`ASGARD_<NAME>`); `./asgard` and every Airflow process",
        "read them, and a bad value stops a command with a message naming the variable.",
        "",
        "| variable | type | default | what it is |",
        "|---|---|---|---|",
    ]
    for name, field in Settings.model_fields.items():
        if field.default_factory is not None:
            default = "computed"
        elif field.default is None:
            default = "unset"
        else:
            default = f"`{field.default}`".replace(str(REPO_ROOT), "<repo>")
        kind = _annotation(field.annotation)
        cells = (f"`{ENV_PREFIX}{name.upper()}`", kind, default, comments.get(name, ""))
        lines.append("| " + " | ".join(_cell(cell) for cell in cells) + " |")
    return "\n".join(lines) + "\n"


def _annotation(annotation: Any) -> str:
    """A field's type as a reader names it: ``one of a, b`` for a Literal, ``int or unset`` for an Optional."""
    import typing

    if typing.get_origin(annotation) is typing.Literal:
        return "one of " + ", ".join(f"`{value}`" for value in typing.get_args(annotation))
    text = getattr(annotation, "__name__", None) or str(annotation)
    return text.replace("typing.", "").replace("pydantic.types.", "").replace(" | None", " or unset")


def _field_comments(cls: type) -> dict[str, str]:
    """The comment above each field of ``cls``'s source: a comment block speaks for the fields after it,
    up to the next blank line or comment."""
    found, comment, after_field = {}, [], False
    for line in inspect.getsource(cls).splitlines():
        stripped = line.strip()
        if stripped.startswith("#"):
            comment = [] if after_field else comment
            comment.append(stripped.lstrip("# "))
            after_field = False
            continue
        name = stripped.split(":", 1)[0]
        if ":" in stripped and name.isidentifier() and not stripped.startswith(("def ", "class ")):
            if comment:
                found[name] = " ".join(comment)
            after_field = True
        elif not stripped:
            comment, after_field = [], False
    return found


# --------------------------------------------------------------------------- the command line
def cli_page(parser: argparse.ArgumentParser) -> str:
    """Every command of ``./asgard`` and its options."""
    lines = ["# Command line", "", "`./asgard COMMAND [options]`; `--help` on each prints the same.", ""]
    for path, command in _commands(parser, []):
        lines += [f"## `./asgard {' '.join(path)}`", "", command.description or _help_of(parser, path), ""]
        options = [action for action in command._actions if not isinstance(action, argparse._HelpAction)]
        options = [action for action in options if not isinstance(action, argparse._SubParsersAction)]
        if options:
            lines += ["| argument | what it is |", "|---|---|"]
            for action in options:
                shown = ", ".join(action.option_strings) or action.dest
                lines.append(f"| `{_cell(shown)}` | {_cell(action.help or '')} |")
            lines.append("")
    return "\n".join(lines)


def _commands(parser: argparse.ArgumentParser, path: list[str]):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, command in action.choices.items():
                yield [*path, name], command
                yield from _commands(command, [*path, name])


def _help_of(parser: argparse.ArgumentParser, path: list[str]) -> str:
    """The help text a command was added with (argparse keeps it on its parent's sub-parsers action)."""
    for name in path:
        action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        help_text = next((choice.help for choice in action._choices_actions if choice.dest == name), "")
        parser = action.choices[name]
    return help_text or ""


if __name__ == "__main__":
    if sys.argv[1:] != ["read"]:
        sys.exit("usage: python -m asgard.local.docs read")
    print(json.dumps({"dag-params": _read_dag_params(), "rest-api": _read_rest_api()}))
