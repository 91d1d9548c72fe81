"""Carrier authentication: a bearer token names exactly one carrier."""

from __future__ import annotations

import hashlib
import hmac

from lastmile.problem import Problem

CHALLENGE = {"WWW-Authenticate": 'Bearer realm="lastmile-ingest"'}


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


class CarrierTokens:
    """Tokens are kept only as SHA-256 digests and compared in constant time; none is ever logged."""

    def __init__(self, tokens: dict[str, str]) -> None:
        self._by_digest = {_digest(token): carrier for token, carrier in tokens.items()}

    def __len__(self) -> int:
        return len(self._by_digest)

    def carrier_for(self, authorization: str | None) -> str:
        if not authorization:
            raise Problem(
                401,
                "send the carrier's token as 'Authorization: Bearer <token>'",
                type_="unauthorized",
                headers=CHALLENGE,
            )
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Problem(
                401, "the Authorization header must be 'Bearer <token>'", type_="unauthorized", headers=CHALLENGE
            )
        digest = _digest(token.strip())
        for known, carrier in self._by_digest.items():
            if hmac.compare_digest(known, digest):
                return carrier
        raise Problem(401, "unknown token", type_="unauthorized", headers=CHALLENGE)
