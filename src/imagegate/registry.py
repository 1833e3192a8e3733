"""The provider types found in the ``imagegate.providers`` entry-point group.

Built-in providers register exactly like third-party ones. Reading the group imports no
provider module; a type's module is imported only when its class is asked for.
"""

from __future__ import annotations

import importlib.metadata
from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from imagegate.providers.base import Provider

__all__ = ["ENTRY_POINT_GROUP", "ProviderType", "provider_types"]

ENTRY_POINT_GROUP = "imagegate.providers"


@dataclass(frozen=True)
class ProviderType:
    """A provider type found in the entry-point group, and who ships it; loaded on use."""

    name: str
    entry_point: importlib.metadata.EntryPoint
    origin: str

    @property
    def cls(self) -> type[Provider]:
        loaded: type[Provider] = self.entry_point.load()
        return loaded


@cache
def provider_types() -> dict[str, ProviderType]:
    """Every provider type registered in the ``imagegate.providers`` entry-point group."""
    found: dict[str, ProviderType] = {}
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        dist = ep.dist.name if ep.dist is not None else "unknown"
        found[ep.name] = ProviderType(ep.name, ep, "built-in" if dist == "imagegate" else dist)
    return found
