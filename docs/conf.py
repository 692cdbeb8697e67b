"""Sphinx configuration for the jobreactor documentation (Markdown pages via myst-parser).

Build with ``.venv/bin/sphinx-build -W -b html docs docs/_build/html``; ``tests/test_docs.py``
does the same so that the pages stay buildable without warnings.
"""

from __future__ import annotations

project = "jobreactor"
author = "the jobreactor authors"
copyright = "2012-2013 Anton Mishchuk (JobReactor); the jobreactor authors"
release = "0.1.0"

extensions = ["myst_parser"]
source_suffix = {".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store"]

# Definition lists and ::: fences read well in Markdown; anchors let pages link to sections.
myst_enable_extensions = ["colon_fence", "deflist"]
myst_heading_anchors = 3

html_theme = "alabaster"
html_title = "jobreactor"
html_static_path: list[str] = []
pygments_style = "sphinx"
