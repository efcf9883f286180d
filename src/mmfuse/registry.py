"""One tiny name -> builder registry shared by encoders, fusions and heads.

Each component module decorates its class with ``@ENCODERS.register("name", Options)``, where
``Options`` is the pydantic model of its settings. The config validates a component's settings
against that model, and ``mmfuse list`` reads the registry.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from .errors import ConfigError


@dataclass(frozen=True)
class Entry:
    """A registered component: its name, builder, option model and one-line summary."""

    name: str
    builder: Callable[..., Any]
    options: type[BaseModel]
    summary: str


class Registry:
    """Maps names to builders for one kind of component (``encoder``, ``fusion``, ``head``,
    ``modality``, ``output``)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, Entry] = {}

    def register(self, name: str, options: type[BaseModel]) -> Callable[[Any], Any]:
        """Class decorator that registers ``builder`` under ``name`` with its option model."""

        def decorator(builder: Any) -> Any:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            doc = (builder.__doc__ or "").strip().splitlines()
            self._entries[name] = Entry(name, builder, options, doc[0] if doc else "")
            return builder

        return decorator

    def get(self, name: str) -> Entry:
        """Return the entry for ``name``, or raise a ConfigError listing the known names."""
        _load_components()
        if name not in self._entries:
            raise ConfigError(
                f"unknown {self.kind} type {name!r}; choose one of: {', '.join(self.names())}"
            )
        return self._entries[name]

    def names(self) -> list[str]:
        """All registered names, sorted."""
        _load_components()
        return sorted(self._entries)

    def options(self, spec: dict) -> BaseModel:
        """The validated options of ``{type: NAME, **options}`` (the rest of ``spec``)."""
        return self.get(spec["type"]).options.model_validate(
            {k: v for k, v in spec.items() if k != "type"})

    def build(self, spec: dict, *args: Any) -> Any:
        """The registered component ``spec["type"]``, built with its validated options and
        ``args``."""
        return self.get(spec["type"]).builder(self.options(spec), *args)

    def entries(self) -> list[Entry]:
        """All registered entries, sorted by name."""
        return [self._entries[n] for n in self.names()]


ENCODERS = Registry("encoder")
FUSIONS = Registry("fusion")
HEADS = Registry("head")
MODALITIES = Registry("modality")  # input types: modalities/kind.py
OUTPUTS = Registry("output")  # output types: outputs/kind.py


def _load_components() -> None:
    """Import the component packages so their decorators run (once; cheap afterwards)."""
    from . import encoders, fusion, heads, modalities, outputs  # noqa: F401
