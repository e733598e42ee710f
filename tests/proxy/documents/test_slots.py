from __future__ import annotations

import asyncio

import pytest

from proxy.documents.slots import FairSlots


async def _settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


def test_a_freed_slot_goes_to_the_party_holding_fewest_not_the_first_in_line() -> None:
    async def run() -> list[str]:
        slots = FairSlots(2)
        order: list[str] = []
        release = {name: asyncio.Event() for name in ("a1", "a2", "a3", "a4", "a5", "b1")}

        async def job(name: str) -> None:
            async with slots.hold(name[0]):
                order.append(name)
                await release[name].wait()

        tasks = [asyncio.create_task(job(n)) for n in ("a1", "a2", "a3", "a4", "a5")]
        await _settle()
        tasks.append(asyncio.create_task(job("b1")))  # b asks after a has queued three more
        await _settle()
        assert order == ["a1", "a2"]
        release["a1"].set()
        await _settle()
        assert order == ["a1", "a2", "b1"]  # not a3, although a3 asked first
        for name in ("a2", "b1", "a3", "a4", "a5"):
            release[name].set()
            await _settle()
        await asyncio.gather(*tasks)
        return order

    assert asyncio.run(run()) == ["a1", "a2", "b1", "a3", "a4", "a5"]


def test_parties_with_equal_shares_take_turns() -> None:
    async def run() -> list[str]:
        slots = FairSlots(1)
        order: list[str] = []
        gate = asyncio.Event()

        async def job(name: str) -> None:
            async with slots.hold(name[0]):
                order.append(name)
                await gate.wait()

        first = asyncio.create_task(job("x0"))
        await _settle()
        tasks = [asyncio.create_task(job(n)) for n in ("a1", "a2", "a3", "b1", "b2", "c1")]
        await _settle()
        gate.set()
        await asyncio.gather(first, *tasks)
        return order

    assert asyncio.run(run()) == ["x0", "a1", "b1", "c1", "a2", "b2", "a3"]


def test_a_waiter_cancelled_before_or_after_its_turn_leaks_no_slot() -> None:
    async def run() -> None:
        slots = FairSlots(1)
        await slots._acquire("a")
        gives_up = asyncio.create_task(slots._acquire("b"))
        granted_late = asyncio.create_task(slots._acquire("c"))
        await _settle()
        gives_up.cancel()  # while still queued
        await asyncio.gather(gives_up, return_exceptions=True)
        slots._release("a")  # hands the slot to c ...
        granted_late.cancel()  # ... which is cancelled before it could run: the slot must come back
        await asyncio.gather(granted_late, return_exceptions=True)
        assert (slots._total, dict(slots._held), slots._waiting) == (0, {}, {})
        async with slots.hold("d"):  # and it is there to take
            assert slots._total == 1

    asyncio.run(run())


def test_capacity_below_one_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        FairSlots(0)
