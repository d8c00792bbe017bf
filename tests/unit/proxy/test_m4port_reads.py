"""M4Port hands out the M4's messages of one read, then runs what waited for all of them.

The M4's bytes are written to the master side of a pty, the proxy's real char-device link
reads the other side: the bytes the H7 would deliver, fed in one chunk.
"""

from __future__ import annotations

import asyncio
import os
import tty

from tests.support import wait_until
from x8manager.proxy.link import open_link
from x8manager.proxy.m4port import M4Port
from x8manager.rpc.framing import Frame, pack_notification


def test_what_waits_for_the_read_runs_after_all_its_messages() -> None:
    async def scenario() -> None:
        master, slave = os.openpty()
        tty.setraw(master)
        port = M4Port(await open_link(os.ttyname(slave)), call_timeout=1.0)
        events: list[str] = []

        def on_frame(frame: Frame) -> None:
            name = frame.message.method  # type: ignore[union-attr]  # notifications only here
            events.append(name)
            if port.after_this_read(lambda: events.append(f"after {name}")):
                return
            events.append(f"{name} alone")

        try:
            port.start(on_frame)
            assert not port.after_this_read(lambda: events.append("never"))  # no read under way
            os.write(master, b"".join(pack_notification(name, []) for name in ("a", "b", "c")))
            await wait_until(lambda: len(events) == 6, "three messages and their after-read work")
            assert events == ["a", "b", "c", "after a", "after b", "after c"]
            events.clear()
            os.write(master, pack_notification("d", []))  # one message: nothing to wait for
            await wait_until(lambda: events, "the lone message")
            assert events == ["d", "d alone"]
        finally:
            await port.close()
            os.close(master)
            os.close(slave)

    asyncio.run(scenario())
