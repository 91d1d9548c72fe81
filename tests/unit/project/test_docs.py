"""The documentation: the README stays short and points at every docs page, the settings table is the settings
module's row for row, every link and repository path the pages name exists, and the site builds with --strict."""

from __future__ import annotations

import html
import os
import re
import subprocess
import sys
from pathlib import Path

from lastmile.settings import documented
from tests.support import REPO

README = REPO / "README.md"
DOCS = REPO / "docs"
PAGES = sorted(DOCS.rglob("*.md"))
README_MAX_LINES = 150

# Paths the pages name that a clone does not hold until something makes them (`make compose-secrets`).
GENERATED = {"secrets/carrier-tokens.json", "secrets/regulator-tokens.json", "secrets/grafana-admin-password"}
# A code span naming a path in the repository: it starts with one of its top-level folders.
REPO_PATH = re.compile(r"(?:lastmile|ingest_service|coverage_service|tools|tests|scripts|docs|secrets|ops)/[\w./-]*")
LINK = re.compile(r"\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
FENCE = re.compile(r"^```.*?^```", flags=re.DOTALL | re.MULTILINE)


def prose(path: Path) -> str:
    """The Markdown of ``path`` without its fenced code blocks."""
    return FENCE.sub("", path.read_text(encoding="utf-8"))


def relative_links(path: Path) -> list[str]:
    """Targets of the inline links in ``path`` that are neither URLs nor anchors on the same page."""
    return [t for t in LINK.findall(prose(path)) if not re.match(r"^([a-z][a-z0-9+.-]*:|#)", t)]


def test_the_settings_table_lists_every_setting_with_its_default() -> None:
    text = (DOCS / "settings.md").read_text(encoding="utf-8")
    table = text.split("<!-- settings-table", 1)[1].split("<!-- /settings-table -->", 1)[0]
    rows = re.findall(r"^\| `([A-Z_]+)` \| (`[^`]*`|\(empty\)) \| (.+) \|$", table, flags=re.MULTILINE)
    found = [
        (env, "" if default == "(empty)" else default.strip("`"), html.unescape(help_)) for env, default, help_ in rows
    ]
    assert found == list(documented()), "run .venv/bin/python scripts/settings_table.py"


def test_the_readme_is_short_and_links_every_docs_page() -> None:
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines; at most {README_MAX_LINES}"
    linked = {(README.parent / t.split("#", 1)[0]).resolve() for t in relative_links(README)}
    assert PAGES, "no docs pages"
    assert [p.relative_to(REPO).as_posix() for p in PAGES if p.resolve() not in linked] == []


def test_every_relative_link_points_at_an_existing_path() -> None:
    broken = []
    for path in [README, *PAGES]:
        for target in relative_links(path):
            resolved = (path.parent / target.split("#", 1)[0].split("?", 1)[0]).resolve()
            if not resolved.is_relative_to(REPO) or not resolved.exists():
                broken.append(f"{path.relative_to(REPO)}: {target}")
    assert broken == []


def test_every_repository_path_the_pages_name_exists() -> None:
    missing = []
    for path in [README, *PAGES]:
        for span in re.findall(r"`([^`\n]+)`", prose(path)):
            if REPO_PATH.fullmatch(span) and span not in GENERATED and not (REPO / span).exists():
                missing.append(f"{path.relative_to(REPO)}: {span}")
    assert missing == []


def test_every_test_the_guarantees_cite_exists() -> None:
    text = (DOCS / "guarantees.md").read_text(encoding="utf-8")
    rows = [line for line in text.splitlines() if line.startswith("| **")]
    assert len(rows) >= 10
    for row in rows:
        cited = re.findall(r"`(tests/[\w/]+\.py)`", row.rsplit(" | ", 1)[1])
        assert cited, f"a guarantee names no test: {row[:80]}"
        assert [t for t in cited if not (REPO / t).is_file()] == [], row[:80]


def test_the_site_builds_strictly(tmp_path: Path) -> None:
    """`make docs`: broken links or anchors, pages missing from the nav, any warning fails the build."""
    mkdocs = Path(sys.executable).with_name("mkdocs")
    done = subprocess.run(
        [str(mkdocs), "build", "--strict", "--config-file", str(REPO / "mkdocs.yml"), "--site-dir", str(tmp_path)],
        cwd=REPO,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert (tmp_path / "index.html").is_file()
    assert "fonts.googleapis.com" not in (tmp_path / "index.html").read_text(encoding="utf-8")


def test_every_problem_type_the_code_sends_is_documented() -> None:
    """A problem's ``type`` names docs/problems.md's entry: every slug in the code is listed there, and no other."""
    sources = [*REPO.glob("lastmile/*.py"), *REPO.glob("ingest_service/*.py"), *REPO.glob("coverage_service/**/*.py")]
    sent = {slug for path in sources for slug in re.findall(r'type_="([a-z-]+)"', path.read_text(encoding="utf-8"))}
    sent.add("request-timeout")  # ingest_service/server.py writes that one itself (TIMED_OUT_TYPE)
    page = (REPO / "docs" / "problems.md").read_text(encoding="utf-8")
    listed = set(re.findall(r"^\| `([a-z-]+)` \|", page, flags=re.MULTILINE))
    assert sent == listed, f"in the code only: {sorted(sent - listed)}; on the page only: {sorted(listed - sent)}"
