"""mkdocs hooks of the documentation site (named in mkdocs.yml).

* The repository's README.md is the site's ``readme.md`` page ("Getting started"): the
  README stays the one source of the set-up commands and the first example. Links are
  written for the repository, so the README's ``docs/<page>.md`` and the pages'
  ``../README.md`` are rewritten to their places on the site.
* Docstrings mark names with Sphinx roles (``:class:`Recorder```), which mkdocstrings
  leaves as text: the API pages show the name alone, in code.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Final

from mkdocs.config.defaults import MkDocsConfig
from mkdocs.structure.files import File, Files
from mkdocs.structure.pages import Page

README: Final = Path(__file__).resolve().parents[2] / "README.md"
README_PAGE: Final = "readme.md"

# `:class:<code>~trainbus.callbacks.Recorder</code>` as mkdocstrings renders a role (the
# name may be `title &lt;target&gt;`).
_ROLE: Final = re.compile(r":(?:class|meth|func|attr|mod|exc|data|obj):<code>([^<]+)</code>")


def on_files(files: Files, config: MkDocsConfig) -> Files:
    """Add the README, its links made relative to the site's pages."""
    text = README.read_text(encoding="utf-8").replace("](docs/", "](")
    files.append(File.generated(config, README_PAGE, content=text))
    return files


def on_page_markdown(markdown: str, page: Page, config: MkDocsConfig, files: Files) -> str:
    """Point the pages' links to the README at its page."""
    return markdown.replace("](../README.md", f"]({README_PAGE}")


def on_page_content(html: str, page: Page, config: MkDocsConfig, files: Files) -> str:
    """Show a role's name in code: ``~a.b.C`` as ``C``, ``title <target>`` as ``title``."""
    return _ROLE.sub(lambda match: f"<code>{_shown(match[1])}</code>", html)


def _shown(name: str) -> str:
    if " &lt;" in name:
        return name.split(" &lt;", 1)[0]
    if name.startswith("~"):
        return name.rsplit(".", 1)[-1]
    return name
