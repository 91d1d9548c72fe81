"""The change list between two registry editions, on hand-made editions whose changes are read off by eye."""

from __future__ import annotations

from lastmile import editions

OLD = {
    "140322": ("盂县", "county"),
    "140323": ("旧县", "county"),
    "140322100201": ("甲村委会", "village"),
    "140322100202": ("乙村", "village"),
    "140322100203": ("丙社区居委会", "community"),
    "140322100204": ("丁村民委员会", "village"),
    "140322100205": ("戊农场", "other"),
}
NEW = {
    "140322": ("盂县", "county"),
    "140324": ("新县", "county"),
    "140322100201": ("甲村委会", "village"),  # unchanged
    "140322100202": ("乙村村委会", "village"),  # renamed, still a village
    "140322100203": ("丙村", "village"),  # renamed into the villages
    "140322100205": ("戊社区", "community"),  # renamed, other -> community: not across the village rule
    "140322100206": ("己村", "village"),  # added
}  # 140322100204 and county 140323 removed


def test_the_change_list_names_each_kind_of_change() -> None:
    found = editions.compare(OLD, NEW)
    assert found.added == ["140322100206", "140324"]
    assert found.removed == ["140322100204", "140323"]
    assert found.renamed == ["140322100202", "140322100203", "140322100205"]
    assert found.reclassified == ["140322100203"]
    assert (found.counties_added, found.counties_removed) == (["140324"], ["140323"])
    assert not found.empty and found.alters and editions.compare(NEW, NEW).empty
    only_added = editions.compare(OLD, {**OLD, "140322100207": ("庚村", "village")})
    assert not only_added.empty and not only_added.alters


def test_the_summary_shows_counts_and_examples() -> None:
    text = editions.summary(editions.compare(OLD, NEW), OLD, NEW, "2022 → 2023")
    assert text.splitlines()[0] == "registry changes, 2022 → 2023:"
    assert "  added               2  (1 village-level)  140322100206 己村; 140324 新县" in text
    assert "140322100203 丙社区居委会 → 丙村" in text
    assert "counties removed 1: 140323" in text
