"""The soak machinery, fast: half a minute of load on the sample registry with every fault of the rotation.

`make soak` runs the real thing (30 minutes, a fault every 4); here the same code runs for 30 s with a fault
every 6 s, so each of the four (worker kill, broker stop, Redis restart, coverage API kill) happens once, and
the run must end with every fault recovered, the figures exact and the counts reported in the JSON.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lastmile_dev.soak import FAULTS, SAMPLE_REGISTRY, SoakConfig, run_soak, table

pytestmark = pytest.mark.e2e


def test_a_short_soak_survives_every_fault_and_counts_exactly(tmp_path: Path) -> None:
    config = SoakConfig(
        minutes=0.5, rate=300, fault_every_minutes=0.1, registry_dir=SAMPLE_REGISTRY, out_dir=tmp_path, sample_seconds=5
    )
    result = run_soak(config, say=lambda _text: None)
    report = table(result)
    assert not result.errors, report
    assert [f.kind for f in result.faults] == list(FAULTS), report
    assert all(f.recovered_seconds is not None for f in result.faults), report
    assert result.exact and result.ok, report
    assert result.events_distinct > 5_000 and result.applied == result.events_distinct, report
    assert result.events_accepted >= result.events_distinct and result.duplicates_dropped >= result.resends_generated
    assert len(result.samples) >= 3
    saved = json.loads(Path(result.path).read_text())
    assert saved["ok"] is True and saved["applied"] == result.applied and len(saved["faults"]) == len(FAULTS)
    assert saved["samples"][-1]["lag_records"] == 0
