"""Settings as flat key=value pairs: Flower's run config (`flwr run --run-config`,
pyproject's `[tool.flwr.app.config]`) and the command line carry them this way.

A `FlatModel` names the fields that travel flat (`FLAT`); each one's key is its kebab-case
alias, its value a plain str, int, float or bool. The pydantic model stays the one source of
every default: pyproject's table, the CLI's defaults and choices all come from it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar, Self

from pydantic import BaseModel, ConfigDict

FlatValue = str | int | float | bool
#: The serialisation context under which field serialisers give their flat form.
FLAT_CONTEXT = {"flat": True}


def kebab(name: str) -> str:
    return name.replace("_", "-")


def is_flat(info: Any) -> bool:
    """Inside a field serialiser: is this the flat form being asked for?"""
    return bool((getattr(info, "context", None) or {}).get("flat"))


class FlatModel(BaseModel):
    model_config = ConfigDict(frozen=True, populate_by_name=True, alias_generator=kebab)
    #: Fields that travel flat, in their order on the wire.
    FLAT: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def flat_key(cls, name: str) -> str:
        info = cls.model_fields[name]
        return info.alias or kebab(name)

    @classmethod
    def flat_keys(cls) -> tuple[str, ...]:
        return tuple(cls.flat_key(n) for n in cls.FLAT)

    def to_flat(self) -> dict[str, FlatValue]:
        data = self.model_dump(by_alias=True, include=set(self.FLAT), context=FLAT_CONTEXT,
                               mode="json")
        return {self.flat_key(n): data[self.flat_key(n)] for n in self.FLAT}

    @classmethod
    def from_flat(cls, values: Mapping[str, object], **extra: Any) -> Self:
        """From flat keys (others are ignored); `extra` sets fields by name."""
        keys = {cls.flat_key(n) for n in cls.FLAT if n not in extra}
        return cls.model_validate({**{k: v for k, v in values.items() if k in keys}, **extra})
