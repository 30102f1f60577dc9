"""The sandbox's environment reaches the sandboxed command only: never the root set-up around it.

The set-up (a shell, mount, cp, find, chmod, setpriv, bubblewrap) runs as root; tools that are not
setuid honour the loader's variables, so an ``LD_PRELOAD`` that reached them ran the preloaded
library's code as root. A real shared library is preloaded here: its constructor writes one line per
process it is loaded into, with that process's uid.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from asgard.core import sandbox
from asgard.core.param_schemas import RESERVED_ENV_PATTERN
from asgard.core.sandbox import SANDBOX_UID, SYSTEM_PYTHON, Bind, Limits
from asgard.training.scripts import runner
from asgard.training.scripts.runner import ScriptError

LIBRARY = r"""
#include <stdio.h>
#include <unistd.h>
__attribute__((constructor)) static void preloaded(void) { fprintf(stderr, "preloaded uid=%d\n", (int)getuid()); }
"""


@pytest.fixture
def preload(tmp_path: Path) -> Path:
    """A library whose every load prints a line with its process's uid (to the sandbox's output: the
    set-up's processes and the command's share it)."""
    folder = tmp_path / "lib"
    folder.mkdir()
    folder.chmod(0o755)
    source = folder / "preload.c"
    source.write_text(LIBRARY)
    library = folder / "preload.so"
    subprocess.run(["gcc", "-shared", "-fPIC", "-o", str(library), str(source)], check=True)
    library.chmod(0o755)
    return library


def test_ld_preload_given_to_a_sandbox_is_loaded_by_its_command_only(tmp_path, preload):
    library = preload
    work = tmp_path / "work"
    work.mkdir()
    probe = "import os, json; print(json.dumps(dict(os.environ)), flush=True)"
    lines: list[str] = []
    env = {"LD_PRELOAD": str(library), "GREETING": "a value with spaces; $(id) and 'quotes'", "PATH": "/usr/bin:/bin"}
    outcome = sandbox.run(
        [SYSTEM_PYTHON, "-c", probe],
        binds=[Bind(library.parent), Bind(work, writable=True)],
        env=env,
        cwd=str(work),
        limits=Limits(timeout_seconds=60, memory_mb=512),
        scratch=tmp_path,
        output=lines.append,
    )
    assert outcome.exit_code == 0, lines
    # The command saw exactly its environment (bubblewrap's PWD and Python's own locale coercion aside) ...
    seen = json.loads(next(line for line in lines if line.startswith("{")))
    seen.pop("PWD", None)
    seen.pop("LC_CTYPE", None)
    assert seen == env
    # ... and the library ran in the sandbox's processes only: no root process of the set-up loaded it.
    loads = [line for line in lines if line.startswith("preloaded uid=")]
    assert loads and set(loads) == {f"preloaded uid={SANDBOX_UID}"}, lines


def test_a_script_may_not_be_given_the_loaders_or_pythons_variables():
    for name in ("LD_PRELOAD", "LD_LIBRARY_PATH", "LD_AUDIT", "PATH", "PYTHONPATH", "PYTHONSTARTUP", "GCONV_PATH",
                 "BASH_ENV", "HOME", "MODEL_NAME"):  # fmt: skip
        with pytest.raises(ScriptError, match=f"env_vars may not set {name} "):
            runner.check_env_vars({name: "x"})
    with pytest.raises(ScriptError, match="value of KEY holds a NUL"):
        runner.check_env_vars({"KEY": "a\0b"})
    assert runner.check_env_vars({"MY_TOKEN": "x", "LDAP_HOST": "y"}) == {"MY_TOKEN": "x", "LDAP_HOST": "y"}


def test_the_train_script_param_refuses_those_names_with_a_400():
    """The Param's schema (what the REST API's 400 comes from) holds the same names back."""
    import jsonschema

    from asgard.training.params import train_script_params

    schema = train_script_params()["env_vars"].schema
    jsonschema.validate({"MY_TOKEN": "x"}, schema)
    for refused in ({"LD_PRELOAD": "/x.so"}, {"PYTHONPATH": "/x"}, {"AWS_SECRET_ACCESS_KEY": "x"}, {"K": "a\0b"}):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(refused, schema)
    assert RESERVED_ENV_PATTERN.startswith("^(")
