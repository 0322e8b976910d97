"""The documentation site: every page in the nav, and an API entry for every public name."""

from __future__ import annotations

import importlib
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Final

import pytest

ROOT: Final = Path(__file__).resolve().parent.parent
DOCS: Final = ROOT / "docs"
MKDOCS_YML: Final = ROOT / "mkdocs.yml"
API_PAGES: Final = {
    "trainbus": "api/trainbus",
    "trainbus.callbacks": "api/callbacks",
    "trainbus.metrics": "api/metrics",
}
GENERATED: Final = {"readme.md"}  # pages a hook adds (docs/hooks/site_hooks.py)


def nav_pages() -> list[str]:
    """The pages the nav of mkdocs.yml lists, in order (``- Title: page.md`` entries)."""
    text = MKDOCS_YML.read_text(encoding="utf-8")
    nav = text[text.index("\nnav:") :]
    return re.findall(r"^\s*-\s*(?:[^:\n]+:\s*)?(\S+\.md)\s*$", nav, flags=re.MULTILINE)


def docs_pages() -> set[str]:
    """Every Markdown page under docs/, relative to it (the hooks' folder is not a page)."""
    return {
        page.relative_to(DOCS).as_posix()
        for page in DOCS.rglob("*.md")
        if page.relative_to(DOCS).parts[0] != "hooks"
    }


def test_every_page_of_docs_is_in_the_nav() -> None:
    missing = sorted(docs_pages() - set(nav_pages()))
    assert not missing, (
        f"docs pages missing from the nav of mkdocs.yml: {missing}; add each under nav: "
        "(a page left out is built but unreachable from the site's menu)"
    )


def test_the_nav_lists_existing_pages_once() -> None:
    pages = nav_pages()
    assert pages[0] == "index.md"
    assert len(pages) == len(set(pages)), pages
    assert not set(pages) - docs_pages() - GENERATED
    assert all(f"api/{Path(page).name}.md" in pages for page in API_PAGES.values())


@pytest.mark.slow  # builds the whole site: seconds
def test_the_site_builds_strict_with_every_public_name(tmp_path: Path) -> None:
    pytest.importorskip("mkdocs", reason='needs pip install "trainbus[docs]"')
    site = tmp_path / "site"
    build = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        check=False,
    )
    assert build.returncode == 0, build.stderr
    for module_name, page in API_PAGES.items():
        html = (site / page / "index.html").read_text(encoding="utf-8")
        anchors = set(re.findall(r'id="([\w.]+)"', html))
        names: list[str] = importlib.import_module(module_name).__all__
        missing = [
            n for n in names if not n.startswith("__") and f"{module_name}.{n}" not in anchors
        ]
        assert not missing, f"{page}: no entry for {missing}"
    readme = (site / "readme" / "index.html").read_text(encoding="utf-8")
    assert "A first fit" in readme and 'href="../tracking/"' in readme
