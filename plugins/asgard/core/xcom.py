"""Typed results that cross task boundaries: dataclasses that travel through XCom as plain dicts.

XCom carries JSON, and Jinja templates in later tasks read fields by key
(``ti.xcom_pull(task_ids='build_image')['image']``), so a result goes out as a dict
(:meth:`XComRecord.to_dict`) and comes back typed (:meth:`XComRecord.from_dict`), which names a
missing field instead of failing on a ``KeyError`` somewhere later.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Self


class XComRecord:
    """Mixin for a frozen dataclass that is a task's result."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Self:
        fields = dataclasses.fields(cls)  # type: ignore[arg-type]
        missing = [field.name for field in fields if field.name not in data and _required(field)]
        if missing:
            raise ValueError(f"{cls.__name__} needs {', '.join(missing)}; got {', '.join(sorted(data)) or 'nothing'}")
        names = {field.name for field in fields}
        return cls(**{key: value for key, value in data.items() if key in names})


def _required(field: dataclasses.Field) -> bool:
    return field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING
