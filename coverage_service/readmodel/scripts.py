"""The read model's Lua scripts (``lua/``), with their key and field names filled in from :mod:`lastmile.names`."""

from __future__ import annotations

import asyncio
import string
from collections.abc import Sequence
from importlib import resources
from typing import Any, Final

import redis.asyncio as aioredis
from redis.commands.core import AsyncScript
from redis.typing import EncodableT

from coverage_service import dedup, fold
from lastmile import names, redis_client
from lastmile.settings import MAX_LAPSE_WINDOW_DAYS

# A day's counts of last reaches (names.LAPSE) are kept while a lapse window can reach them, with a day for scans
# a few minutes ahead and a day for clocks that disagree; older ones expire.
LAPSE_DAYS_KEPT: Final = MAX_LAPSE_WINDOW_DAYS + 2

KEYS: Final = "keys.lua"
PRELUDE: Final = "prelude.lua"


def source(filename: str, prefix: str, *, prelude: bool = False) -> str:
    """The text of ``lua/<filename>`` for key prefix ``prefix``, after the key names (``keys.lua``) and, when
    ``prelude`` is set, the shared prelude of the write scripts (``apply.lua``, ``registry.lua``)."""
    folder = resources.files("coverage_service.readmodel").joinpath("lua")
    parts = [KEYS, *([PRELUDE] if prelude else []), filename]
    text = "\n".join(folder.joinpath(f).read_text(encoding="utf-8") for f in parts)
    return string.Template(text).substitute(
        names.lua_names(prefix),
        dedup_chunk_bytes=dedup.CHUNK_BYTES,
        digest_bytes=dedup.DIGEST_BYTES,
        cst_offset_ms=fold.CST_OFFSET_MS,
        day_ms=fold.DAY_MS,
        lapse_days_kept=LAPSE_DAYS_KEPT,
    )


async def call_each(
    redis: aioredis.Redis,
    script: AsyncScript,
    calls: Sequence[tuple[Sequence[str], Sequence[EncodableT]]],
    *,
    raise_on_error: bool = True,
) -> list[Any]:
    """Run ``script`` once per (keys, args) and return the replies in order: pipelined on one server; concurrently
    on a Redis Cluster, whose client routes each call by its key but pipelines no scripts. The first error is raised
    once every call has run, or, without ``raise_on_error``, returned in its call's place."""
    if redis_client.is_cluster(redis):
        replies = list(await asyncio.gather(*(script(keys=k, args=a) for k, a in calls), return_exceptions=True))
    else:
        async with redis.pipeline(transaction=False) as pipe:
            for keys, args in calls:
                await script(keys=keys, args=args, client=pipe)
            replies = list(await pipe.execute(raise_on_error=False))
    if raise_on_error:
        for reply in replies:
            if isinstance(reply, BaseException):
                raise reply
    return replies
