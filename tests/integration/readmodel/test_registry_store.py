"""Loading the registry into a real redis-server: totals, idempotence, exact reclassification, all or nothing.

Expected figures are computed here straight from the CSV files with the csv module and the classification rule
(docs/registry.md) written out again, so a mistake in lastmile.divisions.classify or in the loader cannot hide itself.
"""

from __future__ import annotations

import csv
import gzip
import shutil
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from coverage_service.readmodel import registry_store
from coverage_service.readmodel.registry_store import load_registry, registry_loaded
from coverage_service.readmodel.writer import ReadModelWriter, RegistryMissing
from lastmile import names
from lastmile.registry import BUNDLED, RegistryError, read_registry
from lastmile.settings import Settings
from tests.support import stored

pytestmark = pytest.mark.integration

SAMPLE = BUNDLED["sample"]
NATIONAL = BUNDLED["national"]
FIVE = ("140322205", "140322", "1403", "14", names.NATIONAL)  # the regions of 小湖村委会 140322205206
XIAOHU = "140322205206"
REACH_FLAGS = (names.field.REACHED, f"{names.field.REACHED}|carrier:sf")
REACHED_FIELDS = (names.field.VILLAGES_REACHED, f"{names.field.VILLAGES_REACHED}|carrier:sf")


def is_village(name: str) -> bool:
    """The classification rule (docs/registry.md): 村委会 / 村民委员会, else not 居委会 / 居民委员会 / 社区, else
    bare 村 / 嘎查."""
    if name.endswith("村委会") or name.endswith("村民委员会"):
        return True
    if name.endswith("居委会") or name.endswith("居民委员会") or name.endswith("社区"):
        return False
    return name.endswith("村") or name.endswith("嘎查")


def csv_rows(folder: Path, stem: str) -> Iterator[dict[str, str]]:
    path = folder / f"{stem}.csv"
    with path.open(encoding="utf-8") if path.exists() else gzip.open(f"{path}.gz", "rt", encoding="utf-8") as f:
        yield from csv.DictReader(f)


def expected_totals(folder: Path) -> dict[str, int]:
    """villages_total of every region and CN, counted from the files."""
    totals = {names.NATIONAL: 0}
    for stem in ("provinces", "cities", "areas", "streets"):
        totals.update((row["code"], 0) for row in csv_rows(folder, stem))
    for row in csv_rows(folder, "villages"):
        if is_village(row["name"]):
            for region in (row["streetCode"], row["areaCode"], row["cityCode"], row["provinceCode"], names.NATIONAL):
                totals[region] += 1
    return totals


async def region_fields(redis: aioredis.Redis, prefix: str, codes: Iterable[str], field: str) -> dict[str, int]:
    """A field of each region (the nation's summed from its provinces, as the read model keeps it)."""
    codes = list(codes)
    async with redis.pipeline(transaction=False) as pipe:
        for code in codes:
            pipe.hget(names.key(prefix, names.REGION, code), field)
        values = await pipe.execute()
    out = {code: int(v) if v is not None else 0 for code, v in zip(codes, values, strict=True)}
    if names.NATIONAL in out:
        out[names.NATIONAL] = int((await stored.nation(redis, prefix)).get(field, 0))
    return out


async def snapshot(redis: aioredis.Redis, prefix: str) -> dict[str, object]:
    """Every key under ``prefix`` with its value, except the load time and the registry generation (every load has
    its own, by design: a batch decided before it must be decided again)."""
    out: dict[str, object] = {}
    async for key in redis.scan_iter(match=f"{prefix}:*", count=1000):
        if key.endswith(names.REG_GENERATION):  # and every shard's copy
            continue
        kind = await redis.type(key)
        if kind == "set":
            out[key] = await redis.smembers(key)
        elif kind == "string":
            out[key] = await redis.get(key)
        else:
            out[key] = {k: v for k, v in (await redis.hgetall(key)).items() if k != names.meta.LOADED_AT}
    return out


async def delete_all(redis: aioredis.Redis, prefix: str) -> None:
    batch: list[str] = []
    async for key in redis.scan_iter(match=f"{prefix}:*", count=10_000):
        batch.append(key)
        if len(batch) == 10_000:
            await redis.unlink(*batch)
            batch.clear()
    if batch:
        await redis.unlink(*batch)


async def test_sample_totals_units_children_and_meta(
    redis: aioredis.Redis, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    prefix = settings.redis_key_prefix
    monkeypatch.setattr(registry_store, "CHUNK_UNITS", 97)  # chunk edges fall inside every level
    calls: list[tuple[int, int]] = []
    assert not await registry_loaded(redis, prefix)

    report = await load_registry(redis, prefix, read_registry(SAMPLE), lambda done, total: calls.append((done, total)))

    totals = expected_totals(SAMPLE)
    assert await region_fields(redis, prefix, tuple(totals), names.field.VILLAGES_TOTAL) == totals
    assert totals["140322"] == 277  # 盂县, as the README says
    villages = list(csv_rows(SAMPLE, "villages"))
    assert report.kinds["village"] == sum(is_village(r["name"]) for r in villages) == totals[names.NATIONAL]
    assert sum(report.kinds.values()) == len(villages) == 580
    assert report.regions == {"province": 3, "city": 3, "county": 3, "township": 41}
    assert (report.added, report.reclassified) == (580 + 50, 0)
    # Chunks of at most 97 units, each within one province (14, 15, 41 in the sample).
    steps = [b - a for (a, _), (b, _) in zip([(0, 630), *calls], calls, strict=False)]
    assert calls[-1] == (630, 630) and all(0 < s <= 97 for s in steps) and {t for _, t in calls} == {630}
    assert await registry_loaded(redis, prefix)

    kinds = await stored.all_kinds(redis, prefix)
    assert len(kinds) == 630
    assert (kinds["14"], kinds["1403"], kinds["140322"], kinds["140322205"]) == (
        "province",
        "city",
        "county",
        "township",
    )
    assert Counter(kinds[r["code"]] for r in villages) == Counter(report.kinds)
    assert await redis.hgetall(names.key(prefix, names.REG_UNIT, XIAOHU)) == {names.unit.NAME: "小湖村委会"}
    assert await redis.hgetall(names.key(prefix, names.REG_UNIT, names.NATIONAL)) == {names.unit.NAME: "全国"}
    assert await redis.smembers(names.key(prefix, names.REG_CHILDREN, names.NATIONAL)) == {"14", "15", "41"}
    assert await redis.smembers(names.key(prefix, names.REG_CHILDREN, "140322205")) == {
        r["code"] for r in villages if r["streetCode"] == "140322205"
    }
    meta = await redis.hgetall(names.key(prefix, names.REG_META))
    assert str(meta.pop(names.meta.LOADED_AT)).endswith("Z")
    assert meta == {
        names.meta.SOURCE: str(SAMPLE),
        names.meta.POPULATION_TIERS: "",
        names.meta.EDITION: "",  # no --edition given
        **{k: str(v) for k, v in report.regions.items()},
        **{k: str(v) for k, v in report.kinds.items()},
    }


async def test_loading_twice_changes_nothing(redis: aioredis.Redis, settings: Settings) -> None:
    prefix = settings.redis_key_prefix
    registry = read_registry(SAMPLE)
    await load_registry(redis, prefix, registry)
    before = await snapshot(redis, prefix)
    generation = await redis.get(names.key(prefix, names.REG_GENERATION))
    report = await load_registry(redis, prefix, registry)
    assert (report.added, report.reclassified) == (0, 0)
    assert await snapshot(redis, prefix) == before
    assert await redis.get(names.key(prefix, names.REG_GENERATION)) not in (None, generation)


def edition_with_kind(tmp_path: Path, code: str, kind: str) -> Path:
    """The sample registry with a ``kind`` column setting ``code`` to ``kind`` (every other row empty)."""
    folder = tmp_path / "edition"
    shutil.copytree(SAMPLE, folder)
    path = folder / "villages.csv"
    header, *lines = path.read_text(encoding="utf-8").splitlines()
    lines = [f"{line},{kind if line.startswith(code + ',') else ''}" for line in lines]
    path.write_text("\n".join([f"{header},kind", *lines]) + "\n", encoding="utf-8")
    return folder


async def reach(redis: aioredis.Redis, prefix: str, code: str, *, counted: bool) -> None:
    """What the worker leaves behind for a reached unit: its flags, and the counts if it was a village."""
    await redis.hset(names.key(prefix, names.LOCATION, code), mapping={flag: 1 for flag in REACH_FLAGS})
    await redis.hset(
        names.key(prefix, names.LOCATION, code), mapping={names.field.FIRST_REACH_MS: 1, "type:delivered": 3}
    )
    if counted:
        for region in (code[:9], code[:6], code[:4], code[:2]):
            for field in REACHED_FIELDS:
                await redis.hincrby(names.key(prefix, names.REGION, region), field, 1)


async def region_state(redis: aioredis.Redis, prefix: str) -> dict[str, dict[str | bytes, str | bytes]]:
    """Every region hash; a counter at 0 is the same as none (a count that went up and down again)."""
    keys = [k async for k in redis.scan_iter(match=names.pattern(prefix, names.REGION), count=1000)]
    state = {k: await redis.hgetall(k) for k in keys}
    return {k: {f: v for f, v in h.items() if v != "0" or f == names.field.VILLAGES_TOTAL} for k, h in state.items()}


@pytest.mark.parametrize(
    ("code", "kind", "delta"),
    [
        (XIAOHU, "community", -1),  # 小湖村委会, a village by the rule, declared a community
        ("140322205207", "other", -1),
        ("140322100101", "village", +1),  # 富春园社区居委会, a community by the rule, declared a village
    ],
)
async def test_reclassifying_a_reached_unit_moves_every_count_by_one(
    redis: aioredis.Redis, settings: Settings, tmp_path: Path, code: str, kind: str, delta: int
) -> None:
    prefix = settings.redis_key_prefix
    await load_registry(redis, prefix, read_registry(SAMPLE))
    await reach(redis, prefix, code, counted=delta < 0)
    await reach(redis, prefix, "140322205201", counted=True)  # a reached neighbour that stays a village
    before = await region_state(redis, prefix)
    nation_before = await stored.nation(redis, prefix)

    report = await load_registry(redis, prefix, read_registry(edition_with_kind(tmp_path, code, kind)))

    assert (report.added, report.reclassified) == (0, 1)
    assert await redis.hget(names.shard_key(prefix, code, names.REG_KIND), code) == kind
    after = await region_state(redis, prefix)
    four = {names.key(prefix, names.REGION, r) for r in (code[:9], code[:6], code[:4], code[:2])}
    nation_after = await stored.nation(redis, prefix)
    pairs = [(after[k], before[k], k) for k in four] + [(nation_after, nation_before, names.NATIONAL)]
    for now, was, key in pairs:
        moved = {f: int(now.get(f, 0)) - int(was.get(f, 0)) for f in now.keys() | was}
        assert moved == {names.field.VILLAGES_TOTAL: delta, **dict.fromkeys(REACHED_FIELDS, delta)} | {
            f: 0 for f in moved if f not in (names.field.VILLAGES_TOTAL, *REACHED_FIELDS)
        }, key
    five = four
    assert {k: v for k, v in after.items() if k not in five} == {k: v for k, v in before.items() if k not in five}
    # The invariant the worker relies on: villages_reached counts the reached units the registry calls villages.
    assert await region_fields(redis, prefix, FIVE[1:], REACHED_FIELDS[0]) == dict.fromkeys(FIVE[1:], 1 + (delta > 0))

    report = await load_registry(redis, prefix, read_registry(SAMPLE))  # back to the rule: back to the start
    assert (report.added, report.reclassified) == (0, 1)
    assert await region_state(redis, prefix) == before


async def test_a_bad_folder_writes_nothing(redis: aioredis.Redis, settings: Settings, tmp_path: Path) -> None:
    folder = edition_with_kind(tmp_path, "411702561009", "hamlet")  # the last row of the file
    with pytest.raises(RegistryError, match=r"villages.csv line 581, kind: 'hamlet' is not one of"):
        await load_registry(redis, settings.redis_key_prefix, read_registry(folder))
    assert [k async for k in redis.scan_iter(match=f"{settings.redis_key_prefix}:*")] == []
    assert not await registry_loaded(redis, settings.redis_key_prefix)


async def test_a_read_model_of_the_earlier_key_layout_is_refused_with_the_way_out(
    redis: aioredis.Redis, settings: Settings
) -> None:
    prefix = settings.redis_key_prefix
    await load_registry(redis, prefix, read_registry(SAMPLE))
    await redis.delete(names.key(prefix, names.LAYOUT))  # as a read model written before layout 2 is
    before = await snapshot(redis, prefix)

    with pytest.raises(registry_store.LayoutMismatch, match=r"layout 1.*lastmile rebuild --wipe"):
        await load_registry(redis, prefix, read_registry(SAMPLE))
    writer = ReadModelWriter(redis, prefix, dedup_window_seconds=3600)
    with pytest.raises(RegistryMissing, match=r"layout 1.*lastmile rebuild --wipe"):
        await writer.units(["140322205206"])
    assert await snapshot(redis, prefix) == before


async def test_a_province_new_to_the_read_model_gets_a_shard_starting_where_every_shard_has_applied_to(
    redis: aioredis.Redis, settings: Settings, tmp_path: Path
) -> None:
    prefix = settings.redis_key_prefix
    await load_registry(redis, prefix, read_registry(SAMPLE))
    assert await stored.shards(redis, prefix) == ["14", "15", "41"]
    for shard, offset in (("14", 9), ("15", 7), ("41", 9)):  # 15 behind: its last call has not run yet
        await redis.hset(names.shard_key(prefix, shard, names.OFFSETS), mapping={"scans:0": offset, "scans:1": 2})
    edition = tmp_path / "with-xinjiang"
    shutil.copytree(SAMPLE, edition)
    for stem, row in (
        ("provinces", '65,"新疆维吾尔自治区"'),
        ("cities", '6501,"乌鲁木齐市",65'),
        ("areas", '650102,"天山区",6501,65'),
        ("streets", '650102001,"燕儿窝街道",650102,65,6501'),
        ("villages", '650102001201,"燕儿窝村委会",650102001,65,6501,650102'),
    ):
        with (edition / f"{stem}.csv").open("a", encoding="utf-8") as f:
            f.write(row + "\n")

    await load_registry(redis, prefix, read_registry(edition))

    assert await stored.shards(redis, prefix) == ["14", "15", "41", "65"]
    offsets = await stored.offsets_by_shard(redis, prefix)
    assert offsets["65"] == {"scans:0": 7, "scans:1": 2}
    assert offsets["15"] == {"scans:0": 7, "scans:1": 2}  # the others as they were
    generations = {await redis.get(names.shard_key(prefix, s, names.REG_GENERATION)) for s in offsets}
    assert generations == {await redis.get(names.key(prefix, names.REG_GENERATION))}


async def test_the_national_registry(redis: aioredis.Redis, settings: Settings) -> None:
    """The whole 2023 edition: counts as in its README (lastmile/registry_data/cn-2023/README.md). (Its load time
    is a figure of `make bench`.)"""
    if not NATIONAL.is_dir():
        pytest.skip(f"no national registry at {NATIONAL}")
    prefix = settings.redis_key_prefix
    by_suffix: Counter[str] = Counter()
    for row in csv_rows(NATIONAL, "villages"):
        name = row["name"]
        bare = not (name.endswith("村委会") or name.endswith("村民委员会")) and is_village(name)
        by_suffix["bare" if bare else "committee" if is_village(name) else "not"] += 1
    assert (by_suffix["committee"], by_suffix["bare"]) == (456_459, 30_033)
    try:
        report = await load_registry(redis, prefix, read_registry(NATIONAL))
        assert report.kinds == {"village": 486_492, "community": 126_714, "other": 7_367}
        assert report.regions == {"province": 31, "city": 342, "county": 2_978, "township": 41_352}
        total = (await stored.nation(redis, prefix))[names.field.VILLAGES_TOTAL]
        assert int(total) == by_suffix["committee"] + by_suffix["bare"] == 486_492
        assert len(await stored.all_kinds(redis, prefix)) == 620_573 + 31 + 342 + 2_978 + 41_352
    finally:
        await delete_all(redis, prefix)  # 750k keys; the other tests share this redis-server
