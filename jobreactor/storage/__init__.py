"""Job storages and the one function that picks one from a ``storage=`` setting."""

from __future__ import annotations

from typing import Any

from jobreactor.errors import ConfigError
from jobreactor.storage.base import IJobStorage
from jobreactor.storage.memory import MemoryStorage

__all__ = ["IJobStorage", "MemoryStorage", "open_storage"]


def open_storage(spec: str | Any) -> Any:
    """Return the storage named by ``spec`` (``"memory"``), or ``spec`` itself if it is one."""
    if IJobStorage.providedBy(spec):
        return spec
    if not isinstance(spec, str):
        raise ConfigError(f"storage must be a storage URL or an IJobStorage, not {spec!r}")
    if spec in ("memory", "memory_storage"):
        return MemoryStorage()
    scheme = spec.split(":", 1)[0]
    if scheme in ("sqlite", "redis", "rediss"):
        raise ConfigError(f"storage {scheme!r} is not available in this version; use 'memory'")
    raise ConfigError(f"storage {spec!r} is not understood; use 'memory'")
