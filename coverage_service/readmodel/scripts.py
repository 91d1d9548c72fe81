"""The read model's Lua scripts (``lua/``), with their key and field names filled in from :mod:`lastmile.names`."""

from __future__ import annotations

import string
from importlib import resources
from typing import Final

from coverage_service import dedup
from lastmile import names

KEYS: Final = "keys.lua"
PRELUDE: Final = "prelude.lua"


def source(filename: str, prefix: str, *, prelude: bool = False) -> str:
    """The text of ``lua/<filename>`` for key prefix ``prefix``, after the key names (``keys.lua``) and, when
    ``prelude`` is set, the shared prelude of the write scripts (``apply.lua``, ``registry.lua``)."""
    folder = resources.files("coverage_service.readmodel").joinpath("lua")
    parts = [KEYS, *([PRELUDE] if prelude else []), filename]
    text = "\n".join(folder.joinpath(f).read_text(encoding="utf-8") for f in parts)
    return string.Template(text).substitute(
        names.lua_names(prefix), dedup_chunk_bytes=dedup.CHUNK_BYTES, digest_bytes=dedup.DIGEST_BYTES
    )
