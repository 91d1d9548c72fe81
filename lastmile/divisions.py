"""Division codes and unit kinds of the national registry (统计用区划代码). Pure; no I/O.

A code's length gives its level, and its prefixes give the regions above it: village 12 digits,
township 9, county 6, city (prefecture) 4, province 2. The nation has no code; the API and the
read model call it ``CN`` (:data:`lastmile.names.NATIONAL`).
"""

from __future__ import annotations

import re
from typing import Final

PROVINCE: Final = "province"
CITY: Final = "city"
COUNTY: Final = "county"
TOWNSHIP: Final = "township"
NATION: Final = "national"

# Kinds of village-level (12-digit) units. Only KIND_VILLAGE (建制村, administrative village) counts
# toward coverage; residents' committees and other units are kept so their parcels still count.
KIND_VILLAGE: Final = "village"
KIND_COMMUNITY: Final = "community"
KIND_OTHER: Final = "other"
VILLAGE_LEVEL_KINDS: Final = (KIND_VILLAGE, KIND_COMMUNITY, KIND_OTHER)
# A unit of an earlier edition that the edition loaded since removed, at any level: it counts in no figure, is in
# no children list, and ingest refuses events at it (docs/registry.md#editions).
KIND_REMOVED: Final = "removed"

LEVEL_BY_LENGTH: Final = {2: PROVINCE, 4: CITY, 6: COUNTY, 9: TOWNSHIP}
REGION_LENGTHS: Final = (2, 4, 6, 9)
CHILD_LENGTH: Final = {0: 2, 2: 4, 4: 6, 6: 9, 9: 12}

_REGION_CODE_RE: Final = re.compile(r"[0-9]{2}|[0-9]{4}|[0-9]{6}|[0-9]{9}")
_VILLAGE_CODE_RE: Final = re.compile(r"[0-9]{12}")

# The classification rule, applied to the unit's name when the registry row has no `kind` column
# (or leaves it empty). Order matters: "…社区村委会" is a village, "…村社区居委会" a community.
_VILLAGE_SUFFIXES: Final = ("村委会", "村民委员会")
_COMMUNITY_SUFFIXES: Final = ("居委会", "居民委员会", "社区")
_BARE_VILLAGE_SUFFIXES: Final = ("村", "嘎查")


def classify(name: str) -> str:
    """The kind of a village-level unit, from its name (docs/registry.md, "Classification rule")."""
    name = name.strip()
    if name.endswith(_VILLAGE_SUFFIXES):
        return KIND_VILLAGE
    if name.endswith(_COMMUNITY_SUFFIXES):
        return KIND_COMMUNITY
    if name.endswith(_BARE_VILLAGE_SUFFIXES):
        return KIND_VILLAGE
    return KIND_OTHER


def is_region_code(code: str) -> bool:
    return bool(_REGION_CODE_RE.fullmatch(code))


def is_village_code(code: str) -> bool:
    return bool(_VILLAGE_CODE_RE.fullmatch(code))


def level_of(code: str) -> str:
    return LEVEL_BY_LENGTH[len(code)] if code else NATION


def parent_of(code: str) -> str:
    """The code one level up; '' (the nation) above a province."""
    return {12: code[:9], 9: code[:6], 6: code[:4], 4: code[:2]}.get(len(code), "")


def regions_of(code: str) -> list[str]:
    """The region codes a unit rolls up into, innermost first, ending with '' for the nation."""
    return [code[:n] for n in (9, 6, 4, 2) if n < len(code) or (n == len(code) == 9)] + [""]
