"""Who may read what: regulator tokens bound to a region prefix, and a request budget per token.

Routes depend on :func:`regulator` (the caller, or 401, 403 or 429) and call :func:`ensure_in_scope` for every code
they serve, after validating it and before reading Redis. Tokens are kept only as SHA-256 digests (docs/access.md).
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from typing import Annotated, Final

from fastapi import Depends, Request
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from coverage_service.api.ratelimit import RateLimiter, retry_after
from lastmile import names, problem
from lastmile.problem import Problem
from lastmile.settings import Settings, SettingsError

REALM: Final = "lastmile-coverage"
CHALLENGE: Final = {"WWW-Authenticate": f'Bearer realm="{REALM}"'}
INVALID_TOKEN: Final = {"WWW-Authenticate": f'Bearer realm="{REALM}", error="invalid_token"'}

# Declares the scheme in the OpenAPI document (and on every operation that depends on `regulator`);
# the header itself is read below, so each way of getting it wrong gets its own message.
bearer = HTTPBearer(
    auto_error=False,
    bearerFormat="opaque token",
    description="A regulator token from LASTMILE_COVERAGE_REGULATOR_TOKENS, bound to a region prefix: it reads that "
    "region and every unit below it. Carrier tokens cannot read coverage.",
)


@dataclass(frozen=True, slots=True)
class Regulator:
    name: str
    region: str  # division code prefix; "" for a national bureau

    def covers(self, code: str) -> bool:
        return self.region == "" or (code != names.NATIONAL and code.startswith(self.region))


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


class Access:
    """The configured regulator tokens, the carrier tokens to recognise (and refuse), and the budgets."""

    def __init__(self, regulators: dict[str, str], carriers: list[str], limiter: RateLimiter) -> None:
        # A regulator's name is never its token: its region and a short fingerprint of the digest, enough to
        # tell two tokens of one bureau apart.
        self._regulators = [
            (_digest(token), Regulator(f"{region or 'national'}#{_digest(token).hex()[:8]}", region))
            for token, region in regulators.items()
        ]
        self._carriers = [_digest(token) for token in carriers]
        self.limiter = limiter

    @classmethod
    def from_settings(cls, settings: Settings) -> Access:
        """Validates the token settings; a SettingsError names the variable at fault."""
        regulators = settings.regulator_token_map()
        carriers = list(settings.carrier_token_map())
        if set(regulators) & set(carriers):
            raise SettingsError(
                "LASTMILE_COVERAGE_REGULATOR_TOKENS: a regulator token is also a carrier token "
                "(LASTMILE_INGEST_CARRIER_TOKENS); give each its own"
            )
        return cls(regulators, carriers, RateLimiter.from_settings(settings))

    def __len__(self) -> int:
        return len(self._regulators)

    def identify(self, authorization: str | None) -> Regulator:
        if not authorization:
            raise Problem(
                401,
                "send a regulator token as 'Authorization: Bearer <token>'",
                type_="unauthorized",
                headers=CHALLENGE,
            )
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Problem(
                401, "the Authorization header must be 'Bearer <token>'", type_="unauthorized", headers=CHALLENGE
            )
        digest = _digest(token.strip())
        found: Regulator | None = None
        for known, who in self._regulators:  # every entry compared: the time does not depend on which matched
            if hmac.compare_digest(known, digest):
                found = who
        if found is not None:
            return found
        if any(hmac.compare_digest(known, digest) for known in self._carriers):
            raise Problem(
                403,
                "this is a carrier's token: carriers post scans to the ingest API and cannot read "
                "coverage; regulators use a regulator token",
                type_="carrier-token",
            )
        raise Problem(401, "unknown token", type_="unauthorized", headers=INVALID_TOKEN)


def access_of(request: Request) -> Access:
    found: Access = request.app.state.access
    return found


AUTHENTICATED: Final = "lastmile.regulator"
"""ASGI scope key: the caller, already authenticated and charged to its budget for this request (by
:mod:`coverage_service.api.fastpath`, which hands the requests it does not answer on to the routes)."""


async def regulator(request: Request, _: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]) -> Regulator:
    """The caller, authenticated and within its request budget."""
    already = request.scope.get(AUTHENTICATED)
    if isinstance(already, Regulator):
        return already
    access = access_of(request)
    who = access.identify(request.headers.get("authorization"))
    wait_s = access.limiter.take(who.name)
    request.scope[AUTHENTICATED] = who  # charged now; the audit log names the caller
    if wait_s > 0:
        limit = f"{access.limiter.per_second:g} requests a second, bursts of {access.limiter.burst}"
        raise Problem(
            429,
            f"too many requests for this token ({limit}); retry after the Retry-After seconds",
            type_="rate-limited",
            headers={"Retry-After": retry_after(wait_s)},
        )
    return who


def ensure_in_scope(who: Regulator, code: str) -> None:
    """403 unless ``who`` may read ``code`` (its region or a unit below it; the nation for national tokens)."""
    if who.covers(code):
        return
    place = "the whole country" if code == names.NATIONAL else code
    raise Problem(
        403,
        f"this token reads region {who.region} and the units below it, not {place}",
        type_="out-of-scope",
        region=who.region,
    )


# -- OpenAPI --------------------------------------------------------------------------------------------


def protects(route: APIRoute) -> bool:
    """Whether the route depends (at any depth) on :func:`regulator`."""

    def walk(dependant: Dependant) -> bool:
        return any(d.call is regulator or walk(d) for d in dependant.dependencies)

    return walk(route.dependant)


def document(route: APIRoute) -> None:
    """Lists the 401, 403 and 429 problems on a protected route, whatever its own `responses` say."""
    route.responses = {**problem.openapi_responses(401, 403, 429), **route.responses}  # a copy: routes share dicts
