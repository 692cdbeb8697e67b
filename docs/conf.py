"""Sphinx configuration for the jobreactor documentation (Markdown pages via myst-parser).

Build with ``.venv/bin/sphinx-build -W -b html docs docs/_build/html``; ``tests/test_docs.py``
does the same so that the pages stay buildable without warnings.
"""

from __future__ import annotations

import re
from typing import Any

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


# The pages are plain Markdown, so they read well on a code-hosting site too: no Sphinx
# directive shows there as literal text. Sphinx still needs a toctree for its navigation; it
# is made here from the links of index.md, in their order, and added (hidden) as it is read.
_PAGE_LINK = re.compile(r"\]\(([\w-]+)\.md\)")


def _add_toctree(app: Any, docname: str, source: list[str]) -> None:
    if docname != root_doc:
        return
    pages = list(dict.fromkeys(_PAGE_LINK.findall(source[0])))
    source[0] += "\n```{toctree}\n:hidden:\n\n" + "\n".join(pages) + "\n```\n"


def setup(app: Any) -> None:
    app.connect("source-read", _add_toctree)
