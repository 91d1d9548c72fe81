"""The vendored JavaScript is as pinned in scripts/vendor.json, with its licences, and nothing loads from a CDN."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

from tests.support import REPO

STATIC = REPO / "coverage_service" / "dashboard" / "static"
CDN = re.compile(r"https?://[^\s\"'`)]*(unpkg|jsdelivr|cdnjs|googleapis)", re.IGNORECASE)


def entries() -> list[dict[str, Any]]:
    loaded: list[dict[str, Any]] = json.loads((REPO / "scripts" / "vendor.json").read_text(encoding="utf-8"))
    assert loaded, "scripts/vendor.json pins nothing"
    return loaded


def test_every_vendored_file_is_present_with_its_pinned_sha256_and_its_licence() -> None:
    for entry in entries():
        folders = {(REPO / dest).parent for dest in entry["files"].values()}
        licences = {str((folder / f"LICENSE.{entry['package']}").relative_to(REPO)) for folder in folders}
        assert set(entry["sha256"]) == set(entry["files"].values()) | licences, entry["package"]
        for dest, digest in entry["sha256"].items():
            path = REPO / dest
            assert path.is_file(), f"{dest} is missing: run scripts/build_vendor"
            assert hashlib.sha256(path.read_bytes()).hexdigest() == digest, f"{dest} differs from scripts/vendor.json"


def test_no_dashboard_file_loads_from_a_cdn() -> None:
    sources = [p for p in STATIC.rglob("*") if p.suffix in {".html", ".js", ".css"}]
    ours: list[Path] = [p for p in sources if not (p.parent.name == "vendor" and p.name.endswith(".min.js"))]
    offending = [str(p.relative_to(REPO)) for p in ours if CDN.search(p.read_text(encoding="utf-8"))]
    assert offending == []
