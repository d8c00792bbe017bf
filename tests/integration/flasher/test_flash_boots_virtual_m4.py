"""A flash reaches the virtual M4 over the stand-in SWD wire, and the M4 then runs that sketch.

The real ``m4-flasher flash`` runs the SWD-probe stand-in; its reset sends the ELF down the wire
(here a UNIX socket, under QEMU the virtio port ``swd``) to the virtual M4 behind a real proxy, so
what Linux can call afterwards comes from the flashed file itself.
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import pytest
from flasher_daemon_rig import STANDIN, Rig

from tests.support.proxy import WAIT, running_proxy
from tests.support.sketches import sketch_elf
from x8manager.m4sim import links
from x8manager.m4sim.swdwire import serve_swd_wire
from x8manager.rpc import AsyncM4Client, RpcError, RpcTimeout


def test_the_flashed_sketch_is_what_the_m4_runs(rig: Rig, tmp_path: Path) -> None:
    wire = tmp_path / "swd.sock"
    rig.env["OPENOCD_STANDIN_SWD"] = f"unix:{wire}"

    def flash(name: str, binds: list[str], behaviour: str = "runs") -> None:
        path = tmp_path / f"{name}.elf"
        path.write_bytes(sketch_elf(name, binds, behaviour))
        done = rig.cli("flash", str(path), "--openocd", str(STANDIN))
        assert done.returncode == 0, done.stdout + done.stderr

    async def scenario() -> None:
        async with (
            running_proxy(tmp_path) as (proxy, m4),
            links.accept_links(links.parse_endpoint(f"unix:{wire}")) as accepted,
        ):
            served = asyncio.create_task(serve_swd_wire(m4, accepted.get, reconnect=True))
            try:
                client = AsyncM4Client("127.0.0.1", proxy.call_ports[0][1], timeout=WAIT)
                await asyncio.to_thread(flash, "A", ["health"])
                assert await client.call("health", 1) == ["A", "health", 1]

                await asyncio.to_thread(flash, "B", ["version"])
                assert await client.call("version") == ["B", "version"]
                with pytest.raises(RpcError, match="could not find function 'health'"):
                    await client.call("health", 1)

                await asyncio.to_thread(flash, "C", ["version"], "silent")
                assert m4.sketch is not None and m4.sketch.name == "C"
                quick = AsyncM4Client("127.0.0.1", proxy.call_ports[0][1], timeout=1.5)
                with pytest.raises(RpcTimeout):
                    await quick.call("version")
                assert m4.stats.boots == 3
            finally:
                served.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await served

    asyncio.run(scenario())


def test_without_a_wire_the_flash_only_records(rig: Rig, tmp_path: Path) -> None:
    rig.env["OPENOCD_STANDIN_SWD"] = f"unix:{tmp_path / 'nobody.sock'}"
    path = tmp_path / "A.elf"
    path.write_bytes(sketch_elf("A", ["health"]))
    done = rig.cli("flash", str(path), "--openocd", str(STANDIN))
    assert done.returncode == 0, done.stdout + done.stderr
    assert rig.chip()["state"] == "programmed"
    assert rig.status()["result"] == "success"
