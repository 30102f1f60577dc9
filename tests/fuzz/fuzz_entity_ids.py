"""Coverage-guided fuzzing (atheris) of the serving app's entity-id reader: any JSON as a ``/predict``
body's ``entities`` is either refused with an InputError naming the problem, or checked ids whose keys
serialize as Feast's; any other exception is a crash.

    python tests/fuzz/fuzz_entity_ids.py -runs=20000            # CI's bounded run (tests/fuzz)
    python tests/fuzz/fuzz_entity_ids.py -max_total_time=3600   # a longer one, by hand
(with PYTHONPATH=plugins:include:include/serving)
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import atheris

with atheris.instrument_imports(include=["asgard_serving"]):
    from asgard_serving.model import InputError
    from asgard_serving.online import OnlineFeatures

SPEC = {
    "project": "asgard",
    "join_keys": {"customer_id": "INT64", "region": "STRING"},
    "views": [],
    "key_samples": [],
}
SEEDS = (
    b'{"customer_id": [1, 2], "region": ["eu", "us"]}',
    b'{"customer_id": 9223372036854775807, "region": "x"}',
    b'{"customer_id": [1.5], "region": [null]}',
    b'{"customer_id": [], "region": []}',
    b'{"customer_id": [15], "region": [null]}',  # the fuzzer's first find: a null string id crashed the key encoding
)


def main() -> None:
    store = Path(tempfile.mkdtemp(prefix="asgard-fuzz-")) / "online.db"
    reader = OnlineFeatures(SPEC, f"sqlite:///{store}", max_entities=50)

    def one_input(data: bytes) -> None:
        try:
            entities = json.loads(data)
        except (ValueError, RecursionError):
            return  # not JSON: the app refuses it before this reader
        try:
            rows, _ = reader.entity_values(entities)
        except InputError:
            return
        for row in rows:
            reader.key_of(row)

    corpus = Path(tempfile.mkdtemp(prefix="asgard-fuzz-corpus-"))
    for index, seed in enumerate(SEEDS):  # libFuzzer starts from these: JSON is hard to find from scratch
        (corpus / f"seed-{index}").write_bytes(seed)
    atheris.Setup([*sys.argv, str(corpus)], one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
