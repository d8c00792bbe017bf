"""The stand-in SWD wire: how a flash on the (virtual) X8 reaches the virtual M4.

On an X8, openocd writes the sketch into the H7's flash over SWD and resets the M4, which then
runs it. Under QEMU there is no H7: the SWD-probe stand-in (tests/standins/openocd-standin) sends
what it "programmed" down a second virtio serial port (``/dev/virtio-ports/swd``), and ``m4-sim
--swd ENDPOINT`` on the host boots it (:meth:`VirtualM4.boot`). Not a real SWD link.

Wire: msgpack arrays, one per message. The probe sends ``["flash", <ELF bytes>]``; the virtual
M4 answers ``["booted", sha256, name, behaviour, problem]`` once it runs the new sketch, or
``["error", text]`` for a message it cannot use (the wire stays up).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import msgpack

from x8manager.m4sim.links import Link
from x8manager.m4sim.m4 import LinkOpener, VirtualM4
from x8manager.m4sim.sketch import MAX_ELF_BYTES

__all__ = ["MAX_WIRE_MESSAGE", "answer", "serve_swd_wire"]

log = logging.getLogger("x8manager.m4sim")

MAX_WIRE_MESSAGE = MAX_ELF_BYTES + 1024
_RETRY_SECONDS = 0.5


def answer(m4: VirtualM4, message: Any) -> list[Any]:
    """The virtual M4's answer to one message from the probe."""
    if not isinstance(message, list) or not message or message[0] != "flash":
        return ["error", f"expected ['flash', <ELF bytes>], got {str(message)[:80]}"]
    if len(message) != 2 or not isinstance(message[1], bytes):
        return ["error", "a flash message carries the ELF as bin"]
    profile = m4.boot(message[1])
    return ["booted", profile.sha256, profile.name, profile.behaviour, profile.problem]


async def _serve_link(m4: VirtualM4, link: Link) -> None:
    unpacker = msgpack.Unpacker(raw=False, max_buffer_size=MAX_WIRE_MESSAGE)
    while data := await link.read():
        try:
            unpacker.feed(data)
            replies = [answer(m4, message) for message in unpacker]
        except (msgpack.BufferFull, ValueError) as exc:
            # A probe that sends garbage or more than a sketch can be: say so, start afresh.
            log.warning("virtual M4: SWD wire message refused: %s", exc)
            unpacker = msgpack.Unpacker(raw=False, max_buffer_size=MAX_WIRE_MESSAGE)
            replies = [["error", f"unreadable message: {exc}"]]
        for reply in replies:
            await link.write(msgpack.packb(reply, use_bin_type=True))


async def serve_swd_wire(m4: VirtualM4, opener: LinkOpener, *, reconnect: bool) -> None:
    """Serve the wire from *opener*'s links; with *reconnect*, across VM reboots, until cancelled."""
    while True:
        try:
            link = await opener()
        except OSError as exc:
            if not reconnect:
                raise
            log.debug("virtual M4: SWD wire not there yet: %s", exc)
            await asyncio.sleep(_RETRY_SECONDS)  # the VM's socket appears when QEMU starts
            continue
        log.info("virtual M4: SWD wire (stand-in) on %s", link.description)
        try:
            await _serve_link(m4, link)
        except OSError as exc:
            log.warning("virtual M4: SWD wire %s failed: %s", link.description, exc)
        finally:
            await link.close()
        if not reconnect:
            return
