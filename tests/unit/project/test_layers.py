"""The layering contracts of pyproject.toml ([tool.importlinter]), checked by import-linter on the real code."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.support import REPO


def test_every_import_contract_is_kept() -> None:
    lint_imports = Path(sys.executable).with_name("lint-imports")
    done = subprocess.run([str(lint_imports), "--no-cache"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 broken" in done.stdout and " kept" in done.stdout, done.stdout


def test_the_runtime_packages_never_import_the_development_tools() -> None:
    """What the image installs (the root distribution) names no module of lastmile_dev, even inside a function."""
    for package in ("lastmile", "ingest_service", "coverage_service"):
        for path in (REPO / package).rglob("*.py"):
            assert "lastmile_dev" not in path.read_text(encoding="utf-8"), path
