"""What changes between two editions of the registry: units added, removed, renamed and reclassified (across the
administrative-village rule), and counties added and removed. Pure; no Redis (docs/registry.md, "Editions").
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Final

from lastmile.divisions import KIND_VILLAGE, VILLAGE_LEVEL_KINDS
from lastmile.registry import Registry

COUNTY_LENGTH: Final = 6
SHOWN: Final = 3  # examples of each change in the summary

Record = tuple[str, str]  # a unit's (name, kind), by its code


def records(registry: Registry) -> dict[str, Record]:
    """Every unit of an edition, regions and village-level units alike."""
    return {u.code: (u.name, u.kind) for u in registry.units()}


@dataclass(frozen=True)
class Changes:
    """Codes in order; ``renamed`` and ``reclassified`` may share a code (a new name that crosses the rule)."""

    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    renamed: list[str] = field(default_factory=list)
    reclassified: list[str] = field(default_factory=list)  # village-level units entering or leaving the villages
    counties_added: list[str] = field(default_factory=list)
    counties_removed: list[str] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not (self.added or self.removed or self.renamed or self.reclassified)

    @property
    def alters(self) -> bool:
        """Whether units already loaded change (removed, renamed, reclassified): what the CLI asks about. Added
        units alter no figure: they join unreached."""
        return bool(self.removed or self.renamed or self.reclassified)


def compare(old: Mapping[str, Record], new: Mapping[str, Record]) -> Changes:
    kept = old.keys() & new.keys()
    return Changes(
        added=sorted(new.keys() - old.keys()),
        removed=sorted(old.keys() - new.keys()),
        renamed=sorted(c for c in kept if old[c][0] != new[c][0]),
        reclassified=sorted(
            c
            for c in kept
            if old[c][1] in VILLAGE_LEVEL_KINDS and (old[c][1] == KIND_VILLAGE) != (new[c][1] == KIND_VILLAGE)
        ),
        counties_added=sorted(c for c in new.keys() - old.keys() if len(c) == COUNTY_LENGTH),
        counties_removed=sorted(c for c in old.keys() - new.keys() if len(c) == COUNTY_LENGTH),
    )


def summary(changes: Changes, old: Mapping[str, Record], new: Mapping[str, Record], title: str) -> str:
    """The change list as the CLI prints it before applying an edition."""

    def village_level(codes: Iterable[str]) -> int:
        return sum(1 for c in codes if len(c) == 12)

    def examples(codes: list[str], show: str) -> str:
        return "; ".join(show.format(c=c, old=_name(old, c), new=_name(new, c)) for c in codes[:SHOWN])

    lines = [
        f"registry changes, {title}:",
        f"  added         {len(changes.added):>7,}  ({village_level(changes.added):,} village-level)  "
        + examples(changes.added, "{c} {new}"),
        f"  removed       {len(changes.removed):>7,}  ({village_level(changes.removed):,} village-level)  "
        + examples(changes.removed, "{c} {old}"),
        f"  renamed       {len(changes.renamed):>7,}  ({village_level(changes.renamed):,} village-level)  "
        + examples(changes.renamed, "{c} {old} → {new}"),
        f"  reclassified  {len(changes.reclassified):>7,}  (entering or leaving the administrative villages)  "
        + examples(changes.reclassified, "{c} {old} → {new}"),
        f"  counties added {len(changes.counties_added):,}: {' '.join(changes.counties_added) or '-'}",
        f"  counties removed {len(changes.counties_removed):,}: {' '.join(changes.counties_removed) or '-'}",
    ]
    return "\n".join(line.rstrip() for line in lines)


def _name(edition: Mapping[str, Record], code: str) -> str:
    return edition[code][0] if code in edition else ""
