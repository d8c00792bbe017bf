"""The M4's calls to Linux as a real sketch makes them (issue 19 items 2 and 3, issue 20 item 8).

Arduino's RPC library gives every call of a sketch thread that thread's id as msgid, call after
call, and a thread whose ``RPC.setTimeout`` ran out simply calls again with the same id. Each test
fails on 38a432d: there a late reply answered the thread's next call, a call for a method nobody
provided yet was dropped, and one app that never answered starved every other app's M4 calls.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import tempfile
from pathlib import Path
from typing import Any

import msgpack
import pytest
from proxy_harness import M4_THREAD_ID, WAIT, m4_on_pty, running_proxy, serving, wait_for

from tests.support.bridge import bridge_app, bridge_python
from tests.support.router import Client, client, rig
from x8manager.proxy import M4Proxy, ProxyConfig
from x8manager.proxy.dispatch import MAX_CALLS_PER_PROVIDER

OTHER_THREAD = M4_THREAD_ID + 0x800
# A sketch thread's RPC.setTimeout where the test wants it to give up on a call.
GIVE_UP_MS = 100
# ... and where it should get its answer: long enough for any loaded machine, so a lost reply fails.
PATIENT_MS = int(WAIT * 1000)


def answer_of(reply: Any) -> Any:
    kind, _msgid, error, result = msgpack.unpackb(reply.raw)
    assert kind == 1 and error is None, reply
    return result


async def give_up(call: asyncio.Task[Any]) -> None:
    """The sketch thread's RPC.setTimeout ran out: it stops waiting (and will call again)."""
    call.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await call


async def forwarded_request(app: Client) -> list[Any]:
    """The next request the proxy forwards to a router client (cancellations are skipped)."""
    while True:
        message = await app.next()
        if message[0] == 0:
            return list(message)


def answer(app: Client, msgid: int, result: Any) -> None:
    app.writer.write(msgpack.packb([1, msgid, None, result]))


# --- one call per msgid (issue 19 item 2) ---------------------------------------------------------

def test_a_thread_that_gave_up_gets_its_own_reply_not_the_late_one_from_a_legacy_service(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    async def scenario() -> None:
        release_first, second_taken, release_second = asyncio.Event(), asyncio.Event(), asyncio.Event()

        async def first() -> str:
            await release_first.wait()
            return "the late reply to the first call"

        async def second() -> str:
            second_taken.set()
            await release_second.wait()
            return "the second call's own reply"

        async with running_proxy(tmp_path) as (proxy, m4), serving(proxy, first=first, second=second):
            thread = m4.thread(0)
            thread.set_timeout(GIVE_UP_MS)
            assert await thread.call("first") is None and thread.timed_out
            thread.set_timeout(None)
            again = asyncio.create_task(thread.call("second"))
            await asyncio.wait_for(second_taken.wait(), WAIT)
            with caplog.at_level(logging.INFO, logger="x8manager.proxy.services"):
                release_first.set()  # the service answers the call the thread gave up on, first
                await wait_for(lambda: again.done() or "nobody waits for" in caplog.text,
                               what="the late reply handled")
            release_second.set()
            assert await asyncio.wait_for(again, WAIT) == "the second call's own reply"
            assert proxy.stats.abandoned == 1
    asyncio.run(scenario())


def test_a_thread_that_gave_up_gets_its_own_reply_not_the_late_one_from_a_router_client(
        tmp_path: Path) -> None:
    async def scenario() -> None:
        async with rig(tmp_path) as (proxy, m4, path), client(path) as app:
            assert await app.request(1, "$/register", "lookup") == [1, 1, None, True]
            thread = m4.thread(0)
            thread.set_timeout(GIVE_UP_MS)
            gave_up = asyncio.create_task(thread.call("lookup", "first"))
            first = await forwarded_request(app)
            assert await gave_up is None and thread.timed_out
            thread.set_timeout(None)
            again = asyncio.create_task(thread.call("lookup", "second"))
            second = await forwarded_request(app)
            assert first[3] == ["first"] and second[3] == ["second"]
            answer(app, first[1], "the late reply to the first call")
            answer(app, second[1], "the second call's own reply")
            assert await asyncio.wait_for(again, WAIT) == "the second call's own reply"
            assert proxy.stats.abandoned == 1
    asyncio.run(scenario())


def test_two_threads_with_fixed_ids_for_10000_calls_get_every_answer_right(tmp_path: Path) -> None:
    """Two sketch threads, 5,000 calls each, one msgid each. Every 250th call the thread gives up;
    its next call is still in flight when the service answers the one it gave up on."""
    calls_per_thread, give_up_every = 5000, 250

    async def scenario() -> None:
        events: dict[tuple[str, int], asyncio.Event] = {}

        def event(kind: str, tag: int) -> asyncio.Event:
            return events.setdefault((kind, tag), asyncio.Event())

        async def slow(tag: int) -> str:
            event("slow taken", tag).set()
            await event("slow released", tag).wait()
            return f"late {tag}"

        async def after(tag: int) -> str:
            event("after taken", tag).set()
            await event("after released", tag).wait()
            return f"after {tag}"

        async def calls(index: int) -> None:
            thread = m4.thread(index)
            thread.set_timeout(PATIENT_MS)
            for n in range(calls_per_thread):
                if n % give_up_every != give_up_every - 1:
                    assert await thread.call("double", n) == 2 * n, (thread, n)
                    continue
                tag = index * calls_per_thread + n
                thread.set_timeout(GIVE_UP_MS)
                assert await thread.call("slow", tag) is None and thread.timed_out
                thread.set_timeout(PATIENT_MS)
                await asyncio.wait_for(event("slow taken", tag).wait(), WAIT)
                following = asyncio.create_task(thread.call("after", tag))
                await asyncio.wait_for(event("after taken", tag).wait(), WAIT)
                event("slow released", tag).set()  # the late reply is written first
                event("after released", tag).set()
                assert await asyncio.wait_for(following, WAIT) == f"after {tag}", (thread, n)

        async with running_proxy(tmp_path) as (proxy, m4), \
                serving(proxy, double=lambda n: 2 * n, slow=slow, after=after):
            await asyncio.gather(calls(0), calls(1))
            assert proxy.stats.m4_calls == 2 * calls_per_thread + 2 * (calls_per_thread // give_up_every)
            assert proxy.stats.abandoned == 2 * (calls_per_thread // give_up_every)
    asyncio.run(scenario())


# --- held while nobody provides the method yet (issue 19 item 3) ----------------------------------

def test_a_call_is_held_until_a_service_registers_the_method_on_the_register_port(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with running_proxy(tmp_path) as (proxy, m4):
            waiting = asyncio.create_task(m4.thread(0).call("late_start", 20))  # waits forever
            await wait_for(lambda: proxy.stats.unroutable == 1, what="the call came before any provider")
            async with serving(proxy, late_start=lambda n: n + 1):
                assert await asyncio.wait_for(waiting, WAIT) == 21
            assert proxy.stats.held_delivered == 1
    asyncio.run(scenario())


def test_a_call_is_held_until_a_bridge_app_provides_the_method_on_the_router_front(tmp_path: Path) -> None:
    python = bridge_python()

    async def scenario() -> None:
        async with rig(tmp_path) as (proxy, m4, path):
            waiting = asyncio.create_task(m4.thread(0).call("late_start", 20))  # waits forever
            await wait_for(lambda: proxy.stats.unroutable == 1, what="the call came before any provider")
            async with bridge_app(python, f"unix://{path}") as app:
                await app.provide("late_start", "echo")
                assert await asyncio.wait_for(waiting, WAIT) == [20]
            assert proxy.stats.held_delivered == 1
    asyncio.run(scenario())


def test_a_held_call_whose_thread_calls_again_is_replaced_by_the_new_call(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with running_proxy(tmp_path) as (proxy, m4):
            thread = m4.thread(0)
            thread.set_timeout(GIVE_UP_MS)
            assert await thread.call("late_start", 1) is None and thread.timed_out
            thread.set_timeout(None)
            again = asyncio.create_task(thread.call("late_start", 2))
            await wait_for(lambda: proxy.stats.unroutable == 2, what="the second call taken")
            seen: list[int] = []

            def late_start(n: int) -> int:
                seen.append(n)
                return n * 10

            async with serving(proxy, late_start=late_start):
                assert await asyncio.wait_for(again, WAIT) == 20
            assert seen == [2]
            assert (proxy.stats.held, proxy.stats.abandoned, proxy.stats.held_delivered) == (2, 1, 1)
    asyncio.run(scenario())


def test_a_method_nobody_ever_provides_gets_no_reply_and_is_counted(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with running_proxy(tmp_path, hold_calls=0.2) as (proxy, m4):
            replies = m4.stats.replies_from_linux
            waiting = asyncio.create_task(m4.thread(0).call("never_provided"))  # waits forever
            await wait_for(lambda: proxy.stats.held_expired == 1, what="the hold ran out")
            # The proxy's silence is the answer; one more call shows the link is still in order.
            async with serving(proxy, ping=lambda: "pong"):
                assert await asyncio.wait_for(m4.thread(1).call("ping"), WAIT) == "pong"
            assert not waiting.done() and m4.stats.replies_from_linux == replies + 1  # the ping's
            await give_up(waiting)
            assert proxy.dispatch is not None
            unprovided = proxy.dispatch.unprovided()
            assert list(unprovided) == ["never_provided"]
            assert unprovided["never_provided"]["calls"] == 1
            assert unprovided["never_provided"]["unanswered"] == 1
            assert unprovided["never_provided"]["held"] == 0
    asyncio.run(scenario())


def test_the_legacy_switch_still_answers_a_missing_method_with_an_error_at_once(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with running_proxy(tmp_path, m4_error_replies=True) as (proxy, m4):
            reply = msgpack.unpackb((await m4.call_raw("nobody", msgid=M4_THREAD_ID)).raw)
            assert reply[2] == "m4-proxy: no service registered for 'nobody'"
            assert proxy.stats.held == 0
    asyncio.run(scenario())


# --- a limit per provider (issue 20 item 8) -----------------------------------------------------

def test_an_app_that_never_answers_does_not_starve_the_m4_calls_to_another_app(tmp_path: Path) -> None:
    python = bridge_python()
    hung_calls = 70

    async def scenario() -> None:
        async with rig(tmp_path) as (proxy, m4, path), \
                bridge_app(python, f"unix://{path}") as hung, bridge_app(python, f"unix://{path}") as other:
            await hung.provide("stuck", "hang")
            await other.provide("lively", "add")
            stuck = [asyncio.create_task(m4.call_raw("stuck", msgid=M4_THREAD_ID + n))
                     for n in range(hung_calls)]
            await wait_for(lambda: proxy.stats.m4_calls == hung_calls, what="the calls to the hung app")
            assert answer_of(await m4.call_raw("lively", 2, 3, msgid=OTHER_THREAD)) == 5
            assert proxy.stats.over_limit == hung_calls - MAX_CALLS_PER_PROVIDER
            for call in stuck:
                await give_up(call)
    asyncio.run(scenario())



def test_a_call_made_while_the_proxy_restarts_under_a_bridge_app_is_held_until_it_provides_again(
        tmp_path: Path) -> None:
    python = bridge_python()

    async def scenario() -> None:
        m4, device = await m4_on_pty(tmp_path)
        with tempfile.TemporaryDirectory(prefix="x8m4") as directory:
            path = Path(directory) / "router.sock"

            def config() -> ProxyConfig:
                return ProxyConfig(device=device, bind="127.0.0.1", register_port=0, call_port=0,
                                   router_socket=str(path))

            proxy = M4Proxy(config())
            await proxy.start()
            try:
                async with bridge_app(python, f"unix://{path}") as app:
                    await app.provide("linux_echo", "echo")
                    await proxy.stop()
                    proxy = M4Proxy(config())
                    await proxy.start()
                    # The sketch calls before the Bridge has reconnected (it retries every 3 s).
                    waiting = asyncio.create_task(m4.thread(0).call("linux_echo", 2))
                    await wait_for(lambda: proxy.stats.m4_calls == 1, what="the call taken")
                    assert proxy.stats.held == 1 and "linux_echo" not in proxy.routes.routes()
                    assert await asyncio.wait_for(waiting, WAIT * 2) == [2]
                    assert proxy.stats.held_delivered == 1
            finally:
                await proxy.stop()
                await m4.stop()
    asyncio.run(scenario())
