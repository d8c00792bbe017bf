"""x8-doctor names a method the sketch keeps calling that no Linux app provides (issue 19 item 3).

The proxy in-process with the virtual M4; the doctor's check asks the proxy's register port
(``unprovided``) from a thread, as the doctor does from its own process.
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

from tests.support.proxy import M4_THREAD_ID, running_proxy, serving, wait_for
from x8manager.doctor.checks import CHECKS, Options, check_unprovided_methods
from x8manager.doctor.findings import Status
from x8manager.doctor.host import Host


def test_a_method_the_sketch_calls_that_nobody_provides_is_named_until_an_app_provides_it(
        tmp_path: Path) -> None:
    assert check_unprovided_methods in CHECKS["apps"]

    async def scenario() -> None:
        async with running_proxy(tmp_path, hold_calls=0.2) as (proxy, m4):
            options = Options(register_port=proxy.register_port, call_port=proxy.call_port, timeout=5)
            host = Host(tmp_path)
            fine = await asyncio.to_thread(check_unprovided_methods, host, options)
            assert fine.status is Status.OK
            for sent in range(1, 4):  # the sketch's thread calls, times out, calls again
                call = asyncio.create_task(m4.call_raw("read_gas", msgid=M4_THREAD_ID))
                await wait_for(lambda sent=sent: proxy.stats.m4_calls == sent, what="the call taken")
                call.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await call
            await wait_for(lambda: proxy.dispatch is not None and proxy.dispatch.held == 0, what="expired")
            finding = await asyncio.to_thread(check_unprovided_methods, host, options)
            assert (finding.layer, finding.check, finding.status) == ("apps", "providers", Status.PROBLEM)
            assert "'read_gas' (3 call(s), the last" in finding.message
            assert "no Linux app provides" in finding.message and "bridge.provide" in finding.fix
            async with serving(proxy, read_gas=lambda: 42):
                finding = await asyncio.to_thread(check_unprovided_methods, host, options)
            assert finding.status is Status.OK
    asyncio.run(scenario())


def test_a_proxy_that_does_not_report_it_is_skipped(tmp_path: Path) -> None:
    options = Options(register_port=1, timeout=1)  # nothing listens on port 1
    finding = check_unprovided_methods(Host(tmp_path), options)
    assert finding.status is Status.SKIPPED
