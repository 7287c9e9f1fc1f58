"""Request limits and the pass gate: one endpoint cannot hold every slot; mass wake-ups
are paced."""

from __future__ import annotations

import asyncio
import threading

import pytest

from tokensync.limits import PassGate, QueueTimedExecutor, RequestLimits, endpoint_key


def test_endpoint_key_normalises_scheme_host_and_default_port():
    assert endpoint_key("https://Login.Example.com./oauth/token") == "https://login.example.com:443"
    assert endpoint_key("https://login.example.com:443/x") == "https://login.example.com:443"
    assert endpoint_key("http://127.0.0.1:8080/t") == "http://127.0.0.1:8080"
    assert endpoint_key("https://127.0.0.1:1/t") != endpoint_key("https://127.0.0.1:2/t")


def test_a_slow_endpoint_holds_at_most_its_own_slots():
    async def scenario() -> None:
        limits = RequestLimits(max_in_flight=10, max_per_host=3)
        release = asyncio.Event()
        running: list[str] = []

        async def request(url: str) -> None:
            async with limits.slot(url):
                running.append(url)
                await release.wait()

        slow = [asyncio.create_task(request("https://slow.example/t")) for _ in range(20)]
        await asyncio.sleep(0.05)
        assert running.count("https://slow.example/t") == 3  # the other 17 queue
        other = asyncio.create_task(request("https://fast.example/t"))
        await asyncio.sleep(0.05)
        assert "https://fast.example/t" in running  # not behind the slow queue
        release.set()
        await asyncio.gather(*slow, other)
        assert limits.in_use() == 0  # idle endpoints are forgotten

    asyncio.run(scenario())


def test_the_global_limit_holds_over_many_endpoints():
    async def scenario() -> None:
        limits = RequestLimits(max_in_flight=4, max_per_host=8)
        release = asyncio.Event()
        in_flight = 0
        peak = 0

        async def request(url: str) -> None:
            nonlocal in_flight, peak
            async with limits.slot(url):
                in_flight += 1
                peak = max(peak, in_flight)
                await release.wait()
                in_flight -= 1

        tasks = [asyncio.create_task(request(f"https://h{i}.example/t")) for i in range(12)]
        await asyncio.sleep(0.05)
        assert in_flight == 4
        release.set()
        await asyncio.gather(*tasks)
        assert peak == 4

    asyncio.run(scenario())


def test_limits_must_be_positive():
    with pytest.raises(ValueError):
        RequestLimits(0, 1)


def test_pass_gate_allows_a_burst_then_paces_to_the_rate():
    async def scenario() -> None:
        clock = [0.0]
        slept: list[float] = []
        real_sleep = asyncio.sleep

        async def fake_sleep(seconds: float) -> None:
            slept.append(seconds)
            clock[0] += seconds
            await real_sleep(0)

        gate = PassGate(rate=10, burst=5, clock=lambda: clock[0])
        asyncio.sleep = fake_sleep  # type: ignore[assignment]
        try:
            for _ in range(5):
                await gate.acquire()
            assert slept == []  # the burst
            for _ in range(10):
                await gate.acquire()
        finally:
            asyncio.sleep = real_sleep  # type: ignore[assignment]
        # ten more passes at 10 per second: a second of pacing in all
        assert sum(slept) == pytest.approx(1.0)

    asyncio.run(scenario())


def test_the_kubernetes_pool_reports_how_long_calls_waited_for_a_thread():
    """One thread, one call holding it: the next two wait, and each reports its wait
    when it starts; a call cancelled while queued (a shutdown) leaves the count too."""
    clock = [0.0]
    waits: list[float] = []
    depths: list[int] = []
    pool = QueueTimedExecutor(1, "test", waits.append, depths.append, clock=lambda: clock[0])
    held, release = threading.Event(), threading.Event()

    def hold() -> bool:
        held.set()
        return release.wait(5)

    holding = pool.submit(hold)
    assert held.wait(5)
    second = pool.submit(lambda: "second")
    clock[0] = 3.0
    third = pool.submit(lambda: "third")
    assert depths[-1] == 2  # second and third queue behind the one holding the thread
    clock[0] = 10.0
    release.set()
    assert (second.result(5), third.result(5)) == ("second", "third")
    assert holding.result(5) is True
    assert waits == [0.0, 10.0, 7.0]
    assert depths[-1] == 0

    held.clear()
    release.clear()
    holding = pool.submit(hold)
    assert held.wait(5)
    queued = pool.submit(lambda: None)
    assert depths[-1] == 1
    pool.shutdown(wait=False, cancel_futures=True)
    assert queued.cancelled()
    release.set()
    holding.result(5)
    assert depths[-1] == 0
