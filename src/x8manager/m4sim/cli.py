"""``m4-sim``: run the virtual M4 (a stand-in for the M4 sketch side), or drive a running one.

Run it:   m4-sim --pty [--control tcp:127.0.0.1:7700]
          m4-sim --connect unix:/path/to/virtio-m4.sock --reconnect
Drive it: m4-sim call --control tcp:127.0.0.1:7700 multiply 3 4
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import signal
import sys
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any

from x8manager.common.logs import setup_logging
from x8manager.common.systemd import notify_ready, notify_stopping
from x8manager.m4sim import links
from x8manager.m4sim.control import ControlClient, ControlError, serve_control
from x8manager.m4sim.h7 import M4_TO_LINUX_CHUNK
from x8manager.m4sim.m4 import LINUX_TO_M4_MAX, LinkOpener, SimSwitches, VirtualM4
from x8manager.m4sim.swdwire import serve_swd_wire

__all__ = ["main"]

log = logging.getLogger("x8manager.m4sim")

DESCRIPTION = (
    "Virtual M4: a stand-in for the Portenta X8's M4 sketch (Arduino RPC/SerialRPC libraries) on the "
    "other end of the m4-proxy link. Not the real M4."
)

CLIENT_COMMANDS = {
    "call": "call a Linux procedure from the M4: NAME [ARG...] (ARGs are JSON, else strings)",
    "notify": "send a notification from the M4: NAME [ARG...]",
    "serial-write": "Serial.write TEXT from the M4 (a tty notification)",
    "serial-read": "print what Linux wrote to the M4's Serial",
    "calls-received": "print the calls and notifications Linux sent to the M4 (JSON lines)",
    "stats": "print the virtual M4's counters (JSON; halted and halt_reason say whether it halted)",
    "reset": "reset the virtual M4 (the same sketch starts again; ends a halt)",
    "sketch": "print the sketch the virtual M4 runs (JSON; null before the first flash)",
}


def _run_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="m4-sim",
        description=DESCRIPTION,
        epilog="Drive a running virtual M4: m4-sim {" + ",".join(CLIENT_COMMANDS) + "} --control ENDPOINT",
    )
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--pty", action="store_true", help="create a pty and print its path (pty=PATH)")
    where.add_argument("--device", metavar="PATH", help="open an existing tty, serial or virtio port")
    where.add_argument("--connect", metavar="ENDPOINT", help="connect to tcp:HOST:PORT or unix:PATH")
    where.add_argument("--listen", metavar="ENDPOINT", help="accept connections on tcp:HOST:PORT")
    parser.add_argument("--reconnect", action="store_true", help="reopen the link after end of stream")
    parser.add_argument(
        "--control", metavar="ENDPOINT", help="serve the control surface (msgpack-RPC) on tcp:HOST:PORT"
    )
    swd = parser.add_mutually_exclusive_group()
    swd.add_argument(
        "--swd",
        metavar="ENDPOINT",
        help="connect the stand-in SWD wire (tcp:HOST:PORT or unix:PATH): a flash boots the sketch",
    )
    swd.add_argument(
        "--swd-listen",
        metavar="ENDPOINT",
        help="accept the stand-in SWD wire on ENDPOINT instead (the probe stand-in connects: host tests)",
    )
    parser.add_argument("--no-demo", action="store_true", help="do not bind the demo procedures")
    parser.add_argument(
        "--bind-echo", metavar="NAME", action="append", default=[], help="bind NAME returning its arguments"
    )
    parser.add_argument(
        "--chunk-size", type=int, default=M4_TO_LINUX_CHUNK, help="bytes per write toward Linux (128)"
    )
    parser.add_argument(
        "--max-inbound",
        type=int,
        default=LINUX_TO_M4_MAX,
        help="drop messages from Linux above this size, as the real driver does (248; 0: no limit)",
    )
    parser.add_argument(
        "--call-timeout", type=float, default=5.0,
        help="RPC.setTimeout of the calls the control surface makes, in seconds (5)",
    )
    parser.add_argument(
        "--concurrent", action="store_true",
        help="let slow procedures answer out of order (no real sketch does: it runs them one by one)",
    )
    parser.add_argument(
        "--interleave-text", metavar="TEXT", default="", help="raw RPC.print TEXT before every message"
    )
    parser.add_argument("-v", "--verbose", action="store_true")
    return parser


def _client_parser(command: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=f"m4-sim {command}", description=CLIENT_COMMANDS[command])
    parser.add_argument("--control", metavar="ENDPOINT", required=True, help="tcp:HOST:PORT of m4-sim")
    parser.add_argument("--timeout", type=float, default=30.0)
    if command in ("call", "notify"):
        parser.add_argument("name")
        parser.add_argument("args", nargs="*")
    elif command == "serial-write":
        parser.add_argument("text")
    return parser


def _json_arg(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def _printable(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode("utf-8", "backslashreplace")
    if isinstance(value, list | tuple):
        return [_printable(v) for v in value]
    if isinstance(value, dict):
        return {str(_printable(k)): _printable(v) for k, v in value.items()}
    return value


def _client_main(command: str, argv: Sequence[str]) -> int:
    args = _client_parser(command).parse_args(argv)
    try:
        endpoint = links.parse_endpoint(args.control)
        with ControlClient(endpoint, timeout=args.timeout) as client:
            if command == "call":
                result = client.request("call", args.name, [_json_arg(a) for a in args.args])
                print(json.dumps(_printable(result)))
            elif command == "notify":
                client.request("notify", args.name, [_json_arg(a) for a in args.args])
            elif command == "serial-write":
                client.request("serial_write", args.text)
            elif command == "serial-read":
                sys.stdout.write(_printable(client.request("serial_read")))
            elif command == "reset":
                client.request("reset")
            elif command == "sketch":
                print(json.dumps(client.request("sketch"), indent=2))
            elif command == "calls-received":
                for call in client.request("calls_received"):
                    print(json.dumps(_printable(call)))
            else:
                print(json.dumps(_printable(client.request("stats")), indent=2))
    except (ControlError, ValueError) as exc:
        print(f"m4-sim {command}: {exc}", file=sys.stderr)
        return 1
    return 0


@contextlib.asynccontextmanager
async def _opener(args: argparse.Namespace) -> AsyncIterator[LinkOpener]:
    if args.pty:
        link, path = links.open_pty()
        print(f"pty={path}", flush=True)
        given = [False]

        async def reuse_pty() -> links.Link:
            # The pty outlives the other side's close/reopen, so there is only one link.
            if given[0]:
                raise OSError(f"pty {path} closed")
            given[0] = True
            return link

        yield reuse_pty
    elif args.device:
        path = args.device

        async def device() -> links.Link:
            return links.open_device(path)

        yield device
    elif args.connect:
        endpoint = links.parse_endpoint(args.connect)

        async def connection() -> links.Link:
            return await links.connect(endpoint)

        yield connection
    else:
        endpoint = links.parse_endpoint(args.listen)
        async with links.accept_links(endpoint) as accepted:
            print(f"listen={endpoint}", flush=True)

            async def next_connection() -> links.Link:
                return await accepted.get()

            yield next_connection


@contextlib.contextmanager
def _swd_wire(m4: VirtualM4, endpoint: links.Endpoint | None,
              accepted: asyncio.Queue[links.StreamLink] | None = None) -> Iterator[None]:
    async def connection() -> links.Link:
        if accepted is not None:
            return await accepted.get()
        assert endpoint is not None
        return await links.connect(endpoint)

    # Always reconnecting: the wire's other end is a VM that boots, reboots and powers off (or, when
    # listening, a probe stand-in that connects once per flash).
    task = asyncio.create_task(serve_swd_wire(m4, connection, reconnect=True), name="m4sim-swd")
    try:
        yield
    finally:
        task.cancel()


async def _run(args: argparse.Namespace) -> int:
    switches = SimSwitches(
        chunk_size=args.chunk_size,
        max_inbound=args.max_inbound or None,
        concurrent_dispatch=args.concurrent,
        interleave_text=args.interleave_text.encode("utf-8"),
    )
    m4 = VirtualM4(demo=not args.no_demo, switches=switches)
    for name in args.bind_echo:
        m4.bind_echo(name)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    async with contextlib.AsyncExitStack() as stack:
        opener = await stack.enter_async_context(_opener(args))
        if args.control:
            control = serve_control(m4, links.parse_endpoint(args.control), round(args.call_timeout * 1000))
            bound = await stack.enter_async_context(control)
            print(f"control={bound}", flush=True)
        # A listener waits for its first connection in the background, not before "ready"; with
        # --reconnect a link that is not there yet (the VM not started) is retried the same way.
        listening = bool(args.listen)
        retrying = args.reconnect or listening
        await m4.start(opener, reconnect=retrying, open_now=not retrying)
        stack.push_async_callback(m4.stop)
        if args.swd:
            stack.enter_context(_swd_wire(m4, links.parse_endpoint(args.swd)))
        elif args.swd_listen:
            wire = links.parse_endpoint(args.swd_listen)
            accepted = await stack.enter_async_context(links.accept_links(wire))
            stack.enter_context(_swd_wire(m4, None, accepted=accepted))
            print(f"swd={args.swd_listen}", flush=True)
        log.info("virtual M4 (stand-in for the M4 sketch) ready; procedures: %s", ", ".join(m4.bound_names))
        print("ready", flush=True)
        notify_ready("virtual M4 running")
        runner = m4.runner
        assert runner is not None
        stopped = asyncio.create_task(stop.wait())
        await asyncio.wait({runner, stopped}, return_when=asyncio.FIRST_COMPLETED)
        stopped.cancel()
        notify_stopping()
        if runner.done() and not runner.cancelled() and runner.exception() is not None:
            log.error("virtual M4 stopped: %s", runner.exception())
            return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in CLIENT_COMMANDS:
        return _client_main(argv[0], argv[1:])
    args = _run_parser().parse_args(argv)
    setup_logging("m4-sim", verbose=args.verbose)
    if args.chunk_size < 1:
        log.error("--chunk-size must be at least 1, got %d", args.chunk_size)
        return 2
    try:
        return asyncio.run(_run(args))
    except (OSError, ValueError) as exc:
        log.error("virtual M4 cannot start: %s", exc)
        return 1


if __name__ == "__main__":
    sys.exit(main())
