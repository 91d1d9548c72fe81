"""The village registry: a folder of division CSVs, read and validated whole. Pure; no Redis.

Everything is checked before a caller can write anything, so a bad edition is never half-loaded. The folder's files
and columns are documented in docs/registry.md ("Registry folders").
"""

from __future__ import annotations

import csv
import gzip
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Final

from lastmile.divisions import CITY, COUNTY, PROVINCE, TOWNSHIP, VILLAGE_LEVEL_KINDS, classify

if TYPE_CHECKING:
    from _csv import Reader

MAX_ERRORS: Final = 20  # errors collected before giving up, so that one run shows most of them
NATION_NAME: Final = "全国"

# Registries shipped with the project, by the name `lastmile registry load NAME` takes: the sample (three
# counties, for `make run` and the tests) and the national 2023 edition (620,573 village-level units).
_DATA: Final = Path(__file__).resolve().parent / "registry_data"
BUNDLED: Final = {"sample": _DATA / "sample", "national": _DATA / "cn-2023"}


def locate(name_or_folder: str | Path) -> Path:
    """The folder of a bundled registry (``sample``, ``national``), or the folder given."""
    return BUNDLED.get(str(name_or_folder), Path(name_or_folder))


@dataclass(frozen=True, slots=True)
class Unit:
    """One unit; ``kind`` is the level for regions (``county`` ...) and the village-level kind for 12-digit codes."""

    code: str
    name: str
    kind: str
    population: int | None = None


@dataclass(frozen=True)
class Registry:
    source: Path
    provinces: list[Unit]
    cities: list[Unit]
    counties: list[Unit]
    townships: list[Unit]
    villages: list[Unit]
    kind_counts: dict[str, int]  # village-level units per kind, every kind present

    @property
    def level_counts(self) -> dict[str, int]:
        return {
            PROVINCE: len(self.provinces),
            CITY: len(self.cities),
            COUNTY: len(self.counties),
            TOWNSHIP: len(self.townships),
        }

    def units(self) -> Iterator[Unit]:
        """Every unit, parents before their children."""
        for level in (self.provinces, self.cities, self.counties, self.townships, self.villages):
            yield from level


class RegistryError(ValueError):
    """The folder is not a valid registry; ``errors`` lists each problem as ``file line N, column: what``."""

    def __init__(self, errors: list[str]) -> None:
        self.errors = errors
        more = f"\n(stopped after {MAX_ERRORS} errors)" if len(errors) >= MAX_ERRORS else ""
        super().__init__("\n".join(errors) + more)


@dataclass(frozen=True)
class _Spec:
    stem: str
    length: int
    level: str
    parents: dict[str, int]  # parent column -> prefix length; the longest is the parent file's code


_SPECS: Final = (
    _Spec("provinces", 2, PROVINCE, {}),
    _Spec("cities", 4, CITY, {"provinceCode": 2}),
    _Spec("areas", 6, COUNTY, {"cityCode": 4, "provinceCode": 2}),
    _Spec("streets", 9, TOWNSHIP, {"areaCode": 6, "provinceCode": 2, "cityCode": 4}),
    _Spec("villages", 12, "", {"streetCode": 9, "provinceCode": 2, "cityCode": 4, "areaCode": 6}),
)
_VILLAGE_OPTIONAL: Final = ("kind", "population")
_KINDS_TEXT: Final = ", ".join(VILLAGE_LEVEL_KINDS)


class _TooMany(Exception):
    pass


class _Errors(list[str]):
    def add(self, where: str, message: str) -> None:
        self.append(f"{where}: {message}")
        if len(self) >= MAX_ERRORS:
            raise _TooMany


def read_registry(folder: str | Path) -> Registry:
    """Read and validate the registry in ``folder``; raise :class:`RegistryError` listing what is wrong."""
    folder = Path(folder)
    errors = _Errors()
    levels: list[list[Unit]] = []
    try:
        if not folder.is_dir():
            errors.add(str(folder), "not a folder")
        parent_codes: dict[str, int] | None = None  # provinces have no parent file
        for spec in _SPECS:
            path = _find(folder, spec.stem, errors)
            units, parent_codes = _read_file(path, spec, parent_codes, errors) if path else ([], None)
            levels.append(units)
    except _TooMany:
        pass
    if errors:
        raise RegistryError(errors)
    provinces, cities, counties, townships, villages = levels
    counts = dict.fromkeys(VILLAGE_LEVEL_KINDS, 0)
    for unit in villages:
        counts[unit.kind] += 1
    return Registry(folder, provinces, cities, counties, townships, villages, counts)


def _find(folder: Path, stem: str, errors: _Errors) -> Path | None:
    found = [p for p in (folder / f"{stem}.csv", folder / f"{stem}.csv.gz") if p.is_file()]
    if len(found) == 1:
        return found[0]
    if found:
        errors.add(stem, f"both {stem}.csv and {stem}.csv.gz are present; keep one")
    else:
        errors.add(stem, f"neither {stem}.csv nor {stem}.csv.gz is in {folder}")
    return None


def _open(path: Path) -> IO[str]:
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8-sig", newline="")
    return path.open(encoding="utf-8-sig", newline="")


def _read_file(
    path: Path, spec: _Spec, parent_codes: dict[str, int] | None, errors: _Errors
) -> tuple[list[Unit], dict[str, int] | None]:
    """The units of one file, and their code -> line for the next level's parent check.

    The codes are None when the file could not be read whole: its children are then not checked
    against it, which would only repeat the same problem once per row.
    """
    units: list[Unit] = []
    codes: dict[str, int] = {}
    reader = None
    try:
        with _open(path) as stream:
            reader = csv.reader(stream)
            columns = _columns(path.name, next(reader, []), spec, errors)
            if columns is None:
                return units, None
            _read_rows(path.name, reader, columns, spec, parent_codes, errors, units, codes)
    except (OSError, EOFError, UnicodeDecodeError, csv.Error) as exc:
        line = reader.line_num + 1 if reader else 1
        errors.add(f"{path.name} line {line}", f"unreadable ({exc})")
        return units, None
    return units, codes


def _columns(filename: str, header: list[str], spec: _Spec, errors: _Errors) -> dict[str, int] | None:
    """Column name -> index, or None after reporting a header that cannot be read safely."""
    required = ["code", "name", *spec.parents]
    allowed = set(required) | (set(_VILLAGE_OPTIONAL) if spec.stem == "villages" else set())
    where = f"{filename} line 1"
    columns = {name: i for i, name in enumerate(header)}
    ok = True
    if len(columns) != len(header):
        errors.add(where, "a column name repeats")
        ok = False
    for name in header:
        if name not in allowed:
            errors.add(where, f"unknown column {name!r}; expected {', '.join(required)} (in any order)")
            ok = False
    for name in required:
        if name not in columns:
            errors.add(where, f"missing column {name!r}")
            ok = False
    return columns if ok else None


def _read_rows(
    filename: str,
    reader: Reader,
    columns: dict[str, int],
    spec: _Spec,
    parent_codes: dict[str, int] | None,
    errors: _Errors,
    units: list[Unit],
    codes: dict[str, int],
) -> None:
    """The hot loop (620k rows nationally), so plain string tests rather than regular expressions."""
    width, length, level = len(columns), spec.length, spec.level
    code_i, name_i = columns["code"], columns["name"]
    parent_checks = [(column, columns[column], n) for column, n in spec.parents.items()]
    parent_n = max(spec.parents.values(), default=0)
    parent_file = next((s.stem for s in _SPECS if s.length == parent_n), "")
    kind_i, pop_i = columns.get("kind"), columns.get("population")
    orphans: set[str] = set()  # missing parents, reported at their first child only
    for row in reader:
        line = reader.line_num
        if not row:
            continue  # a blank line
        at = f"{filename} line {line}"
        if len(row) != width:
            errors.add(at, f"{len(row)} fields, the header has {width}")
            continue
        code = row[code_i]
        if len(code) != length or not (code.isascii() and code.isdigit()):
            errors.add(f"{at}, code", f"{code!r} is not a {length}-digit code")
            continue
        first = codes.setdefault(code, line)
        if first != line:
            errors.add(f"{at}, code", f"{code} repeats line {first}")
        name = row[name_i].strip()
        if not name:
            errors.add(f"{at}, name", "empty")
        for column, i, n in parent_checks:
            if row[i] != code[:n]:
                errors.add(f"{at}, {column}", f"{row[i]!r} is not {code[:n]}, the first {n} digits of the code")
        parent = code[:parent_n]
        if parent_codes is not None and parent not in parent_codes and parent not in orphans:
            orphans.add(parent)
            errors.add(f"{at}, code", f"its parent {parent} is not in {parent_file}")
        kind = level or _kind(row, kind_i, name, at, errors)
        population = _population(row[pop_i], at, errors) if pop_i is not None else None
        units.append(Unit(code, name, kind, population))


def _kind(row: list[str], kind_i: int | None, name: str, at: str, errors: _Errors) -> str:
    given = row[kind_i].strip() if kind_i is not None else ""
    if not given:
        return classify(name)
    if given not in VILLAGE_LEVEL_KINDS:
        errors.add(f"{at}, kind", f"{given!r} is not one of {_KINDS_TEXT}")
    return given


def _population(raw: str, at: str, errors: _Errors) -> int | None:
    raw = raw.strip()
    if not raw:
        return None
    if not (raw.isascii() and raw.isdigit()):
        errors.add(f"{at}, population", f"{raw!r} is not a non-negative integer")
        return None
    return int(raw)
