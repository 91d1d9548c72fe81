"""Live channels: one read of the figures per poll however many listen, every listener sees every change, and the
last to leave stops the reads."""

from __future__ import annotations

import asyncio

from coverage_service.api.channels import Channels, frame_of

POLL_S = 0.01


class Figures:
    """A fetch that counts its calls and returns whatever ``value`` is now."""

    def __init__(self) -> None:
        self.calls = 0
        self.value = {"reached": 1}

    async def __call__(self) -> dict[str, int]:
        self.calls += 1
        return dict(self.value)


async def listen(channels: Channels, key: str, fetch: Figures, changes: int) -> list[bytes]:
    """Join, collect ``changes`` frames after the first, leave."""
    channel = channels.join(key, key, fetch, frame_of(fetch.value))
    seen = [channel.frame.data]
    try:
        while len(seen) <= changes:
            version = channel.version
            await channel.wait(version, 5.0)
            if channel.frame.data != seen[-1]:
                seen.append(channel.frame.data)
    finally:
        channels.leave(key)
    return seen


async def test_a_hundred_listeners_cost_one_read_a_poll_and_each_sees_every_change() -> None:
    channels, fetch = Channels(POLL_S), Figures()
    listeners = [asyncio.create_task(listen(channels, "14", fetch, changes=2)) for _ in range(100)]
    await asyncio.sleep(5 * POLL_S)
    assert len(channels) == 1
    fetch.value = {"reached": 2}
    await asyncio.sleep(5 * POLL_S)
    fetch.value = {"reached": 3}
    seen = await asyncio.gather(*listeners)
    assert all(s == [frame_of({"reached": n}).data for n in (1, 2, 3)] for s in seen)
    # About one read a poll for the whole time: with a read per listener it would be a hundred times that.
    polls = fetch.calls
    assert 0 < polls < 100
    await asyncio.sleep(5 * POLL_S)
    assert len(channels) == 0 and fetch.calls <= polls + 1  # the last listener left: no more reads


async def test_listeners_of_other_keys_have_channels_of_their_own() -> None:
    channels, a, b = Channels(POLL_S), Figures(), Figures()
    first = channels.join("14", "14", a, frame_of(a.value))
    second = channels.join("41", "41", b, frame_of(b.value))
    try:
        assert first is not second and len(channels) == 2
        b.value = {"reached": 9}
        await second.wait(0, 5.0)
        assert second.version == 1 and first.version == 0
    finally:
        channels.leave("14")
        channels.leave("41")
        await channels.close()
