"""What a coverage figure is restricted to: a carrier or cooperation model, and a population tier.

A scope names the read-model fields it reads: ``villages_reached|carrier:sf@p2500`` is the number of
villages of 2,500 people or more that carrier sf has reached. Pure; no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass

from lastmile.names import field


@dataclass(frozen=True, slots=True)
class Filter:
    carrier: str | None = None
    cooperation_model: str | None = None
    min_population: int | None = None

    @property
    def dim(self) -> str:
        """The reach-flag suffix: '' for any carrier, '|carrier:sf', '|model:postal_express'."""
        if self.carrier is not None:
            return field.DIM_SEP + field.CARRIER + self.carrier
        if self.cooperation_model is not None:
            return field.DIM_SEP + field.MODEL + self.cooperation_model
        return ""

    @property
    def tier(self) -> str:
        return "" if self.min_population is None else f"{field.TIER_SEP}{self.min_population}"

    @property
    def total_field(self) -> str:
        return field.VILLAGES_TOTAL + self.tier

    @property
    def reached_field(self) -> str:
        return field.VILLAGES_REACHED + self.dim + self.tier

    @property
    def station_field(self) -> str:
        return field.VILLAGES_WITH_STATION + self.tier

    def index_suffix(self) -> str:
        return self.dim + self.tier

    def describe(self) -> dict[str, object]:
        return {
            "carrier": self.carrier,
            "cooperation_model": self.cooperation_model,
            "min_population": self.min_population,
        }


ALL = Filter()
