"""Vendors the front-end JavaScript pinned in scripts/vendor.json from the npm registry (development time only).

Usage: build_vendor.py [--update-hashes]. For each entry: ``npm pack`` the tarball, check its sha512 against the
pinned ``integrity``, write the listed files and ``LICENSE.<package>`` beside them, then check their sha256 against
the manifest's, or with ``--update-hashes`` write the new sha256 values into the manifest instead.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
MANIFEST = ROOT / "scripts" / "vendor.json"


class VendorError(Exception):
    pass


def destination(relative: str) -> Path:
    path = (ROOT / relative).resolve()
    if Path(relative).is_absolute() or not path.is_relative_to(ROOT):
        raise VendorError(f"destination {relative!r} is not a path inside the repository")
    return path


def licence_destinations(entry: dict[str, Any]) -> list[str]:
    """``LICENSE.<package>`` in each directory the entry's files go to."""
    folders = sorted({str(Path(dest).parent) for dest in entry["files"].values()})
    return [f"{folder}/LICENSE.{entry['package']}" for folder in folders]


def pack(package: str, version: str, work: Path) -> Path:
    npm = shutil.which("npm")
    if npm is None:
        raise VendorError("npm is not on PATH (it is needed at development time only)")
    done = subprocess.run(
        [npm, "pack", f"{package}@{version}", "--silent", "--ignore-scripts"],
        cwd=work,
        capture_output=True,
        text=True,
        check=False,
    )
    tarballs = list(work.glob("*.tgz"))
    if done.returncode != 0 or len(tarballs) != 1:
        raise VendorError(f"npm pack {package}@{version} failed (exit {done.returncode}): {done.stderr.strip()}")
    return tarballs[0]


def check_integrity(tarball: Path, package: str, version: str, integrity: str) -> None:
    if not integrity.startswith("sha512-"):
        raise VendorError(f"{package}@{version}: integrity {integrity!r} is not a sha512- string")
    actual = "sha512-" + base64.b64encode(hashlib.sha512(tarball.read_bytes()).digest()).decode("ascii")
    if actual != integrity:
        raise VendorError(
            f"{package}@{version}: tarball integrity MISMATCH: got {actual}, pinned {integrity}. "
            "Do not update the pin unless `npm view <pkg>@<version> dist.integrity` agrees."
        )


def member(archive: tarfile.TarFile, package: str, path: str) -> bytes:
    try:
        handle = archive.extractfile(f"package/{path}")
    except KeyError:
        handle = None
    if handle is None:
        raise VendorError(f"{package}: the tarball has no regular file {path!r}")
    with handle:
        return handle.read()


def vendor(entry: dict[str, Any], work: Path) -> dict[str, str]:
    """Writes one entry's files and licence; returns their sha256 by destination."""
    package, version = entry["package"], entry["version"]
    tarball = pack(package, version, work)
    check_integrity(tarball, package, version, entry["integrity"])
    pairs = list(entry["files"].items()) + [(entry["licence"], dest) for dest in licence_destinations(entry)]
    hashes: dict[str, str] = {}
    with tarfile.open(tarball, "r:gz") as archive:
        for inside, dest in pairs:
            data = member(archive, package, inside)
            path = destination(dest)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
            hashes[dest] = hashlib.sha256(path.read_bytes()).hexdigest()
            print(f"build_vendor: {package}@{version} {inside} -> {dest}", file=sys.stderr)
    return hashes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--update-hashes", action="store_true", help="write the files' sha256 into the manifest")
    args = parser.parse_args(argv)
    entries: list[dict[str, Any]] = json.loads(MANIFEST.read_text(encoding="utf-8"))
    problems: list[str] = []
    for entry in entries:
        with tempfile.TemporaryDirectory(prefix="build_vendor-") as work:
            try:
                hashes = vendor(entry, Path(work))
            except VendorError as error:
                print(f"build_vendor: ERROR: {error}", file=sys.stderr)
                return 1
        if args.update_hashes:
            entry["sha256"] = hashes
        elif entry["sha256"] != hashes:
            for dest in sorted(set(hashes) | set(entry["sha256"])):
                pinned, actual = entry["sha256"].get(dest), hashes.get(dest)
                if pinned != actual:
                    problems.append(f"{dest}: manifest sha256 {pinned}, written file {actual}")
    if args.update_hashes:
        MANIFEST.write_text(json.dumps(entries, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        print(f"build_vendor: updated the sha256 values in {MANIFEST.relative_to(ROOT)}", file=sys.stderr)
    if problems:
        print(
            "build_vendor: ERROR: sha256 mismatch (rerun with --update-hashes after a deliberate upgrade):",
            file=sys.stderr,
        )
        for problem in problems:
            print(f"  {problem}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
