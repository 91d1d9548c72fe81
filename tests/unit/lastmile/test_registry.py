"""The registry reader: the classification rule, the kind override, and every validation error it reports."""

from __future__ import annotations

import gzip
from collections.abc import Callable
from pathlib import Path

import pytest

from lastmile.divisions import KIND_COMMUNITY, KIND_OTHER, KIND_VILLAGE, classify
from lastmile.registry import MAX_ERRORS, Registry, RegistryError, Unit, read_registry

HEADERS = {
    "provinces": ["code", "name"],
    "cities": ["code", "name", "provinceCode"],
    "areas": ["code", "name", "cityCode", "provinceCode"],
    "streets": ["code", "name", "areaCode", "provinceCode", "cityCode"],
    "villages": ["code", "name", "streetCode", "provinceCode", "cityCode", "areaCode"],
}
Rows = dict[str, list[list[str]]]


def base_rows() -> Rows:
    """盂县 with one township and two of its villages (real codes and names)."""
    return {
        "provinces": [["14", "山西省"]],
        "cities": [["1403", "阳泉市", "14"]],
        "areas": [["140322", "盂县", "1403", "14"]],
        "streets": [["140322205", "东梁乡", "140322", "14", "1403"]],
        "villages": [
            ["140322205206", "小湖村委会", "140322205", "14", "1403", "140322"],
            ["140322205207", "东梁社区居委会", "140322205", "14", "1403", "140322"],
        ],
    }


def village(code: str, name: str, *extra: str) -> list[str]:
    return [code, name, code[:9], code[:2], code[:4], code[:6], *extra]


def write(
    folder: Path,
    rows: Rows,
    *,
    headers: dict[str, list[str]] | None = None,
    gz: bool = False,
    bom: bool = False,
) -> Path:
    """A registry folder in the national format: quoted names, bare codes."""
    folder.mkdir(parents=True, exist_ok=True)
    for stem, stem_rows in rows.items():
        header = (headers or {}).get(stem, HEADERS[stem])
        lines = [",".join(header)] + [",".join(_quote(i, v) for i, v in enumerate(row)) for row in stem_rows]
        data = (("\ufeff" if bom else "") + "\n".join(lines) + "\n").encode("utf-8")
        if gz:
            (folder / f"{stem}.csv.gz").write_bytes(gzip.compress(data))
        else:
            (folder / f"{stem}.csv").write_bytes(data)
    return folder


def _quote(index: int, value: str) -> str:
    return f'"{value}"' if index == 1 else value


def errors_of(folder: Path) -> str:
    with pytest.raises(RegistryError) as caught:
        read_registry(folder)
    return str(caught.value)


# -- the classification rule ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("小湖村委会", KIND_VILLAGE),
        ("石家庄村民委员会", KIND_VILLAGE),
        ("张庄村", KIND_VILLAGE),  # bare …村
        ("朝格温都尔嘎查", KIND_VILLAGE),  # Inner Mongolian village, bare …嘎查
        ("幸福社区村委会", KIND_VILLAGE),  # the village suffix wins over an inner 社区
        ("富春园社区居委会", KIND_COMMUNITY),
        ("红楼居民委员会", KIND_COMMUNITY),
        ("城关社区", KIND_COMMUNITY),
        ("城关村社区居委会", KIND_COMMUNITY),  # the community suffix wins over an inner 村
        ("额里图种畜场分场嘎查村虚拟生活区", KIND_OTHER),
        ("国营林场管理区", KIND_OTHER),
        ("  小湖村委会 ", KIND_VILLAGE),  # surrounding blanks do not matter
    ],
)
def test_classification_rule(tmp_path: Path, name: str, kind: str) -> None:
    rows = base_rows()
    rows["villages"] = [village("140322205206", name)]
    registry = read_registry(write(tmp_path, rows))
    assert classify(name) == kind
    assert registry.villages == [Unit("140322205206", name.strip(), kind)]
    assert registry.kind_counts == {KIND_VILLAGE: 0, KIND_COMMUNITY: 0, KIND_OTHER: 0} | {kind: 1}


def test_reads_units_per_level_parents_first(tmp_path: Path) -> None:
    registry = read_registry(write(tmp_path, base_rows()))
    assert isinstance(registry, Registry)
    assert registry.source == tmp_path
    assert registry.provinces == [Unit("14", "山西省", "province")]
    assert registry.cities == [Unit("1403", "阳泉市", "city")]
    assert registry.counties == [Unit("140322", "盂县", "county")]
    assert registry.townships == [Unit("140322205", "东梁乡", "township")]
    assert registry.level_counts == {"province": 1, "city": 1, "county": 1, "township": 1}
    assert [u.code for u in registry.units()] == ["14", "1403", "140322", "140322205", "140322205206", "140322205207"]


def test_kind_column_overrides_the_rule_and_population_is_read(tmp_path: Path) -> None:
    rows = base_rows()
    rows["villages"] = [
        village("140322205206", "小湖村委会", "community", "1200"),  # overridden
        village("140322205207", "东梁社区居委会", "", ""),  # empty: the rule decides
        village("140322205208", "东梁新区", "village", "0"),
        village("140322205209", "北山村", " other ", " 35 "),  # blanks around values are ignored
    ]
    headers = {"villages": [*HEADERS["villages"], "kind", "population"]}
    registry = read_registry(write(tmp_path, rows, headers=headers))
    assert [(u.kind, u.population) for u in registry.villages] == [
        (KIND_COMMUNITY, 1200),
        (KIND_COMMUNITY, None),
        (KIND_VILLAGE, 0),
        (KIND_OTHER, 35),
    ]
    assert registry.kind_counts == {KIND_VILLAGE: 1, KIND_COMMUNITY: 2, KIND_OTHER: 1}


def test_columns_in_any_order(tmp_path: Path) -> None:
    rows = base_rows()
    rows["villages"] = [["14", "小湖村委会", "140322205206", "140322", "1403", "140322205"]]
    headers = {"villages": ["provinceCode", "name", "code", "areaCode", "cityCode", "streetCode"]}
    registry = read_registry(write(tmp_path, rows, headers=headers))
    assert registry.villages == [Unit("140322205206", "小湖村委会", KIND_VILLAGE)]


@pytest.mark.parametrize(("gz", "bom"), [(False, False), (True, False), (False, True), (True, True)])
def test_plain_gzip_and_bom(tmp_path: Path, gz: bool, bom: bool) -> None:
    registry = read_registry(write(tmp_path, base_rows(), gz=gz, bom=bom))
    assert registry.provinces == [Unit("14", "山西省", "province")]
    assert len(registry.villages) == 2


def test_plain_and_gzip_files_mix(tmp_path: Path) -> None:
    rows = base_rows()
    write(tmp_path, {k: v for k, v in rows.items() if k != "villages"})
    write(tmp_path, {"villages": rows["villages"]}, gz=True)
    assert len(read_registry(tmp_path).villages) == 2


def test_blank_lines_are_skipped_but_counted(tmp_path: Path) -> None:
    write(tmp_path, base_rows())
    path = tmp_path / "villages.csv"
    header, first, second = path.read_text(encoding="utf-8").splitlines()
    path.write_text(f"{header}\n\n{first}\n{second.replace('小湖', '')},extra\n", encoding="utf-8")
    assert errors_of(tmp_path) == "villages.csv line 4: 7 fields, the header has 6"


# -- validation errors: file, line and column named ---------------------------------------------------

Mutation = Callable[[Rows], None]


def _set(stem: str, row: int, column: int, value: str) -> Mutation:
    def mutate(rows: Rows) -> None:
        rows[stem][row][column] = value

    return mutate


def _append(stem: str, values: list[str]) -> Mutation:
    return lambda rows: rows[stem].append(values)


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (_set("villages", 1, 0, "14032220520x"), "villages.csv line 3, code: '14032220520x' is not a 12-digit code"),
        (
            _set("streets", 0, 0, "14032220"),
            "streets.csv line 2, code: '14032220' is not a 9-digit code\n"
            "villages.csv line 2, code: its parent 140322205 is not in streets",  # once, not once per village
        ),
        (
            _set("provinces", 0, 0, "１４"),
            "provinces.csv line 2, code: '１４' is not a 2-digit code\n"
            "cities.csv line 2, code: its parent 14 is not in provinces",
        ),
        (_set("cities", 0, 1, " "), "cities.csv line 2, name: empty"),
        (
            _set("villages", 0, 2, "140322206"),
            "villages.csv line 2, streetCode: '140322206' is not 140322205, the first 9 digits of the code",
        ),
        (
            _set("areas", 0, 3, "41"),
            "areas.csv line 2, provinceCode: '41' is not 14, the first 2 digits of the code",
        ),
        (
            _append("villages", village("140322206001", "新村委会")),
            "villages.csv line 4, code: its parent 140322206 is not in streets",
        ),
        (_append("cities", ["1501", "呼和浩特市", "15"]), "cities.csv line 3, code: its parent 15 is not in provinces"),
        (
            _append("streets", ["140322205", "东梁乡", "140322", "14", "1403"]),
            "streets.csv line 3, code: 140322205 repeats line 2",
        ),
        (_append("villages", ["140322205208", "北山村"]), "villages.csv line 4: 2 fields, the header has 6"),
    ],
)
def test_row_errors(tmp_path: Path, mutate: Mutation, message: str) -> None:
    rows = base_rows()
    mutate(rows)
    assert errors_of(write(tmp_path, rows)) == message


@pytest.mark.parametrize(
    ("kind", "population", "message"),
    [
        ("hamlet", "", "kind: 'hamlet' is not one of village, community, other"),
        ("Village", "", "kind: 'Village' is not one of village, community, other"),
        ("", "-5", "population: '-5' is not a non-negative integer"),
        ("", "12.5", "population: '12.5' is not a non-negative integer"),
        ("", "many", "population: 'many' is not a non-negative integer"),
    ],
)
def test_kind_and_population_errors(tmp_path: Path, kind: str, population: str, message: str) -> None:
    rows = base_rows()
    rows["villages"] = [
        village("140322205206", "小湖村委会", "", ""),
        village("140322205207", "东梁", kind, population),
    ]
    headers = {"villages": [*HEADERS["villages"], "kind", "population"]}
    assert errors_of(write(tmp_path, rows, headers=headers, gz=True)) == f"villages.csv.gz line 3, {message}"


@pytest.mark.parametrize(
    ("stem", "header", "message"),
    [
        ("areas", [*HEADERS["areas"], "kind"], "areas.csv line 1: unknown column 'kind'"),
        ("villages", [*HEADERS["villages"], "kinds"], "villages.csv line 1: unknown column 'kinds'"),
        ("streets", ["code", "name", "provinceCode", "cityCode"], "streets.csv line 1: missing column 'areaCode'"),
        ("provinces", ["code", "name", "name"], "provinces.csv line 1: a column name repeats"),
    ],
)
def test_header_errors(tmp_path: Path, stem: str, header: list[str], message: str) -> None:
    rows = base_rows()
    rows[stem] = [[*row, ""] for row in rows[stem]] if len(header) > len(HEADERS[stem]) else rows[stem]
    rows[stem] = [row[: len(header)] for row in rows[stem]]
    assert errors_of(write(tmp_path, rows, headers={stem: header})).startswith(message)


def test_a_bad_header_does_not_cascade_into_its_children(tmp_path: Path) -> None:
    rows = base_rows()
    assert errors_of(write(tmp_path, rows, headers={"streets": ["code", "name"]})) == (
        "streets.csv line 1: missing column 'areaCode'\n"
        "streets.csv line 1: missing column 'provinceCode'\n"
        "streets.csv line 1: missing column 'cityCode'"
    )


def test_missing_and_doubled_files(tmp_path: Path) -> None:
    rows = base_rows()
    write(tmp_path, {k: v for k, v in rows.items() if k != "villages"})
    write(tmp_path, {"provinces": rows["provinces"]}, gz=True)
    assert errors_of(tmp_path) == (
        "provinces: both provinces.csv and provinces.csv.gz are present; keep one\n"
        f"villages: neither villages.csv nor villages.csv.gz is in {tmp_path}"
    )


def test_not_a_folder(tmp_path: Path) -> None:
    assert errors_of(tmp_path / "nowhere").startswith(f"{tmp_path / 'nowhere'}: not a folder\n")


def test_unreadable_files(tmp_path: Path) -> None:
    write(tmp_path, base_rows())
    (tmp_path / "villages.csv").write_bytes(b"code,name\n" + "小湖".encode("gb18030"))
    (tmp_path / "streets.csv").unlink()
    (tmp_path / "streets.csv.gz").write_bytes(b"not gzip at all")
    message = errors_of(tmp_path)
    assert message.startswith("streets.csv.gz line 1: unreadable (")
    assert "\nvillages.csv line 1: unreadable (" in message


def test_error_lines_in_a_gzip_file(tmp_path: Path) -> None:
    rows = base_rows()
    rows["villages"] += [village(f"1403222052{n:02d}", "") for n in range(10, 15)]
    message = errors_of(write(tmp_path, rows, gz=True))
    assert message.splitlines() == [f"villages.csv.gz line {n}, name: empty" for n in range(4, 9)]


def test_stops_after_max_errors(tmp_path: Path) -> None:
    rows = base_rows()
    rows["villages"] += [village(f"1403222053{n:02d}", "") for n in range(MAX_ERRORS + 10)]
    with pytest.raises(RegistryError) as caught:
        read_registry(write(tmp_path, rows))
    assert len(caught.value.errors) == MAX_ERRORS
    assert str(caught.value).endswith(f"villages.csv line {MAX_ERRORS + 3}, name: empty\n(stopped after 20 errors)")
