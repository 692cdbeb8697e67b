"""Job storages and the one function that picks one from a ``storage=`` setting."""

from __future__ import annotations

import os
import urllib.parse
from typing import Any

from jobreactor.errors import ConfigError
from jobreactor.storage.base import IJobStorage, PermanentStorageError, StorageError
from jobreactor.storage.memory import MemoryStorage
from jobreactor.storage.redis import RedisStorage
from jobreactor.storage.sqlite import SYNCHRONOUS_MODES, SQLiteStorage

__all__ = [
    "IJobStorage",
    "MemoryStorage",
    "PermanentStorageError",
    "RedisStorage",
    "SQLiteStorage",
    "StorageError",
    "open_storage",
]

#: What a ``storage=`` setting may look like, for error messages.
STORAGE_FORMS = (
    "'memory', 'sqlite:/path/jobs.db', 'sqlite:relative.db', "
    "'redis://[[user]:password@]host[:port][/db][?prefix=jr&timeout=5]' or 'rediss://...' (TLS)"
)


def open_storage(spec: str | Any, *, create: bool = True) -> Any:
    """Return the storage named by ``spec``, or ``spec`` itself if it is one.

    ``spec`` is ``"memory"``, ``"sqlite:PATH"`` (a relative PATH is taken from the current
    directory now, so a later ``chdir`` does not move the database; ``sqlite:///abs/path``
    is accepted too; ``?synchronous=normal`` trades the last commits on a power cut for
    speed), or a ``redis://`` / ``rediss://`` URL (see :meth:`RedisStorage.from_url`).
    Nothing is connected or created here: the storage's ``open()`` does that.
    ``create=False`` makes a file-backed storage refuse to create a missing database.
    A spec that does not parse raises :class:`ConfigError` saying what is wrong.
    """
    if IJobStorage.providedBy(spec):
        return spec
    if not isinstance(spec, str):
        raise ConfigError(f"storage must be a storage URL or an IJobStorage, not {spec!r}")
    if spec in ("memory", "memory_storage"):
        return MemoryStorage()
    scheme = spec.split(":", 1)[0] if ":" in spec else ""
    if scheme == "sqlite":
        return _sqlite(spec, create)
    if scheme in ("redis", "rediss"):
        return RedisStorage.from_url(spec)
    raise ConfigError(f"storage {spec!r} is not understood; use {STORAGE_FORMS}")


def _sqlite(spec: str, create: bool) -> SQLiteStorage:
    rest = spec[len("sqlite:") :]
    path, _, query = rest.partition("?")
    if path.startswith("//"):  # sqlite:///abs/path.db: an empty authority, then the path
        authority, slash, path = path[2:].partition("/")
        if authority:
            raise ConfigError(
                f"storage {spec!r}: a SQLite URL names a file, not a host ({authority!r}); "
                f"write sqlite:/abs/path.db or sqlite:relative.db"
            )
        path = slash + path
    if not path:
        raise ConfigError(
            f"storage {spec!r} names no file; write sqlite:/abs/path.db or sqlite:relative.db"
        )
    options: dict[str, Any] = {}
    for name, values in urllib.parse.parse_qs(query, keep_blank_values=True).items():
        if name != "synchronous":
            raise ConfigError(f"storage {spec!r}: unknown option {name!r}; known: synchronous")
        if len(values) != 1 or values[0].lower() not in SYNCHRONOUS_MODES:
            raise ConfigError(
                f"storage {spec!r}: synchronous must be one of {', '.join(SYNCHRONOUS_MODES)}"
            )
        options["synchronous"] = values[0].lower()
    if query and not options:
        raise ConfigError(f"storage {spec!r}: cannot read the options after '?'")
    return SQLiteStorage(os.path.abspath(path), create=create, **options)
