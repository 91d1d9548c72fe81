"""Rebuild lastmile/registry_data/sample/ from the national registry: whole counties plus the rows above them.

    .venv/bin/python scripts/extract_sample_registry.py 140322 411702 152529

Rows are copied verbatim from the national files (same headers, same quoting, same order), so the sample
is a true extract of the 2023 edition; the result is read back with the registry's own validation.
"""

from __future__ import annotations

import argparse
import csv
import gzip
from pathlib import Path

from lastmile.registry import BUNDLED, read_registry

REPO = Path(__file__).resolve().parents[1]
NATIONAL = BUNDLED["national"]
SAMPLE = REPO / "lastmile" / "registry_data" / "sample"
# File stem -> how many leading digits of a county code select its rows (the province and city above it,
# the county, and everything below).
STEMS = {"provinces": 2, "cities": 4, "areas": 6, "streets": 6, "villages": 6}


def extract(source: Path, out: Path, counties: list[str]) -> None:
    """Write the five files for ``counties`` to ``out``; nothing is written if a county is unknown."""
    files: dict[str, list[str]] = {}
    for stem, digits in STEMS.items():
        wanted = {county[:digits] for county in counties}
        with gzip.open(source / f"{stem}.csv.gz", "rt", encoding="utf-8", newline="") as src:
            header, *rows = src.readlines()
        files[stem] = [header] + [row for row in rows if next(csv.reader([row]))[0][:digits] in wanted]
    found = {next(csv.reader([row]))[0] for row in files["areas"][1:]}
    if missing := sorted(set(counties) - found):
        raise SystemExit(f"not counties of {source}: {', '.join(missing)}")
    out.mkdir(parents=True, exist_ok=True)
    for stem, lines in files.items():
        (out / f"{stem}.csv").write_text("".join(lines), encoding="utf-8", newline="")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("counties", nargs="+", help="6-digit county codes, e.g. 140322")
    parser.add_argument("--source", type=Path, default=NATIONAL, help=f"national registry (default {NATIONAL})")
    parser.add_argument("--out", type=Path, default=SAMPLE, help=f"output folder (default {SAMPLE})")
    args = parser.parse_args()
    if bad := [c for c in args.counties if not (len(c) == 6 and c.isascii() and c.isdigit())]:
        parser.error(f"not 6-digit county codes: {', '.join(bad)}")
    extract(args.source, args.out, args.counties)
    registry = read_registry(args.out)
    print(f"{args.out}: {registry.level_counts} {registry.kind_counts}")


if __name__ == "__main__":
    main()
