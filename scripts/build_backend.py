"""setuptools' build backend, building in a temporary directory instead of ``build/``.

``pip install /path/to/clone`` builds in the source tree, and setuptools leaves ``build/``
(and ``*.egg-info``) there; a stale ``build/lib`` (say, a module since deleted) can then end
up in the next wheel. Each hook here hands setuptools an extra config (``DIST_EXTRA_CONFIG``)
that points ``build`` and ``egg_info`` at a temporary directory, removed when the hook
returns. Everything else is setuptools' own.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from typing import Any

from setuptools import build_meta


@contextlib.contextmanager
def _building_elsewhere() -> Iterator[None]:
    with tempfile.TemporaryDirectory(prefix="jobreactor-build-") as scratch:
        config = os.path.join(scratch, "build.cfg")
        with open(config, "w", encoding="utf-8") as file:
            file.write(f"[build]\nbuild_base = {os.path.join(scratch, 'build')}\n")
            file.write(f"[egg_info]\negg_base = {scratch}\n")
        before = os.environ.get("DIST_EXTRA_CONFIG")
        os.environ["DIST_EXTRA_CONFIG"] = config
        try:
            yield
        finally:
            if before is None:
                del os.environ["DIST_EXTRA_CONFIG"]
            else:
                os.environ["DIST_EXTRA_CONFIG"] = before


def build_wheel(
    wheel_directory: str,
    config_settings: dict[str, Any] | None = None,
    metadata_directory: str | None = None,
) -> str:
    with _building_elsewhere():
        name: str = build_meta.build_wheel(wheel_directory, config_settings, metadata_directory)
    return name


def build_editable(
    wheel_directory: str,
    config_settings: dict[str, Any] | None = None,
    metadata_directory: str | None = None,
) -> str:
    with _building_elsewhere():
        name: str = build_meta.build_editable(wheel_directory, config_settings, metadata_directory)
    return name


def build_sdist(sdist_directory: str, config_settings: dict[str, Any] | None = None) -> str:
    with _building_elsewhere():
        name: str = build_meta.build_sdist(sdist_directory, config_settings)
    return name


def _elsewhere(hook: Any) -> Any:
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        with _building_elsewhere():
            return hook(*args, **kwargs)

    wrapped.__name__ = hook.__name__
    wrapped.__doc__ = hook.__doc__
    return wrapped


get_requires_for_build_wheel = _elsewhere(build_meta.get_requires_for_build_wheel)
get_requires_for_build_sdist = _elsewhere(build_meta.get_requires_for_build_sdist)
get_requires_for_build_editable = _elsewhere(build_meta.get_requires_for_build_editable)
prepare_metadata_for_build_wheel = _elsewhere(build_meta.prepare_metadata_for_build_wheel)
prepare_metadata_for_build_editable = _elsewhere(build_meta.prepare_metadata_for_build_editable)
