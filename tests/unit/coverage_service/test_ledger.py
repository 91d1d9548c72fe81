"""The ledger's stored form: traces packed one after another and read back as they were."""

from __future__ import annotations

import dataclasses

from hypothesis import given
from hypothesis import strategies as st

from coverage_service import ledger
from lastmile import scan

traces = st.builds(
    ledger.Trace,
    key=st.binary(min_size=ledger.KEY_BYTES, max_size=ledger.KEY_BYTES),
    fingerprint=st.binary(min_size=8, max_size=8),
    accepted_s=st.integers(0, 2**32 - 1),
    occurred_ms=st.integers(-(2**62), 2**62),  # the contract takes any time from year 1
    reaches=st.booleans(),
    carrier=st.from_regex(r"[a-z0-9_-]{2,32}", fullmatch=True),
    model=st.sampled_from([None, *scan.COOPERATION_MODELS]),
    station=st.sampled_from(["", ledger.station_key("S1"), ledger.station_key("村站|一号")]),
)


@given(st.lists(traces, max_size=20))
def test_traces_read_back_as_they_were_packed(written: list[ledger.Trace]) -> None:
    assert ledger.unpack(b"".join(t.pack() for t in written)) == written


def test_a_trace_is_30_bytes_and_its_carrier_and_8_more_with_a_station() -> None:
    t = ledger.Trace(b"k" * 8, b"f" * 8, 1_700_000_000, 1_700_000_000_000, True, "sf", "own_station", "")
    assert len(t.pack()) == 30 + len("sf")
    assert len(dataclasses.replace(t, station=ledger.station_key("S")).pack()) == 30 + len("sf") + 8
