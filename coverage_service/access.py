"""Who may read what: regulator tokens bound to a region prefix.

INTERFACE (routes depend on it): ``regulator`` is a FastAPI dependency returning the caller's
:class:`Regulator` (401 without a valid token); ``ensure_in_scope(regulator, code)`` raises 403 for a
code outside the regulator's region. This first version lets everyone read everything.
"""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import Request

from lastmile import names


@dataclass(frozen=True, slots=True)
class Regulator:
    name: str
    region: str  # division code prefix; "" for a national bureau

    def covers(self, code: str) -> bool:
        return self.region == "" or (code != names.NATIONAL and code.startswith(self.region))


async def regulator(request: Request) -> Regulator:
    return Regulator(name="anyone", region="")


def ensure_in_scope(who: Regulator, code: str) -> None:
    return None
