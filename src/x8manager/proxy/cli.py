"""``m4-proxy``: the M4 RPC proxy daemon (drop-in for Arduino's ``m4_proxy``)."""

from __future__ import annotations

import argparse
import asyncio
import functools
import importlib
import logging
import os
import signal
import sys
from collections.abc import Callable, Coroutine
from typing import Any

from x8manager.common.logs import setup_logging
from x8manager.common.systemd import notify_ready, notify_stopping
from x8manager.proxy.core import (
    DEFAULT_CALL_TIMEOUT,
    DEFAULT_HOLD_CALLS,
    DEFAULT_SERVICE_TIMEOUT,
    M4Proxy,
    ProxyConfig,
)
from x8manager.proxy.link import StartupError

__all__ = ["build_parser", "main"]

log = logging.getLogger("x8manager.proxy")

LOG_IDENTIFIER = "m4_proxy"  # what users grep the journal for, as with the original
DEFAULT_ROUTER_SOCKET = "/var/run/arduino-router.sock"  # the Bridge's default address
DEFAULT_ROUTER_GROUP = "arduino-router"
DEFAULT_MONITOR = "127.0.0.1:7500"  # as arduino-router's monitor port
DEFAULT_TRACE_SOCKET = "/run/m4-proxy/trace.sock"  # the unit's RuntimeDirectory
EXIT_STARTUP_FAILED = 1


def _port(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"port {value} out of range 0..65535")
    return value


def _seconds(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text}: must be a positive number of seconds")
    return value


def _seconds_or_zero(text: str) -> float:
    value = float(text)
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"{text}: must be 0 or a positive number of seconds")
    return value


def _help_width() -> int:
    """The width argparse's formatter is given: without one it imports shutil (and with it zlib,
    bz2 and lzma, about 1 MB of the daemon's memory) to read the terminal's, and it makes a
    formatter on every add_argument, not only for --help."""
    try:
        columns = int(os.environ.get("COLUMNS", "")) or os.get_terminal_size().columns
    except (ValueError, OSError):
        columns = 80
    return max(columns - 2, 40)


def build_parser() -> argparse.ArgumentParser:
    defaults = ProxyConfig()
    parser = argparse.ArgumentParser(
        prog="m4-proxy",
        formatter_class=functools.partial(argparse.HelpFormatter, width=_help_width()),
        description="Forward MessagePack-RPC between Linux programs (TCP) and the M4 core (char device).",
    )
    parser.add_argument("--device", default=defaults.device,
                        help="M4 link: char device, tty/pty/virtio port path, or tcp:HOST:PORT "
                             "(default %(default)s)")
    parser.add_argument("--bind", default=None, metavar="ADDR",
                        help="listen on this address only (default: all interfaces, IPv4 and IPv6)")
    parser.add_argument("--register-port", type=_port, default=defaults.register_port, metavar="N",
                        help="port for register() (default %(default)s; 0 picks a free one)")
    parser.add_argument("--call-port", type=_port, default=defaults.call_port, metavar="N",
                        help="port for calls into the M4 (default %(default)s; 0 picks a free one)")
    parser.add_argument("--call-timeout", type=_seconds, default=DEFAULT_CALL_TIMEOUT, metavar="S",
                        help="wait this long for the M4's reply to a call (default %(default)s)")
    parser.add_argument("--service-timeout", type=_seconds, default=DEFAULT_SERVICE_TIMEOUT, metavar="S",
                        help="wait this long for a Linux service's reply to an M4 call (default %(default)s)")
    parser.add_argument("--timeout-error-reply", action="store_true",
                        help="answer a call the M4 did not reply to with an error reply "
                             "(default: close without a reply, as the original proxy)")
    parser.add_argument("--m4-error-replies", action="store_true",
                        help="answer M4 calls to unregistered methods or unreachable services with an "
                             "error reply at once (default: no reply, as the original proxy; an error "
                             "reply halts a sketch that calls .as<T>() on the result)")
    parser.add_argument("--hold-calls", type=_seconds_or_zero, default=DEFAULT_HOLD_CALLS, metavar="S",
                        help="hold an M4 call for a method nobody provides yet this long for an app to "
                             "provide it (default %(default)s; 0 drops it at once, as the original proxy)")
    parser.add_argument("--registry-file", default=None, metavar="FILE",
                        help="keep the registry in FILE so a restarted proxy still knows the services "
                             "(e.g. /run/m4-proxy/registry.json; default: memory only, as the original)")
    parser.add_argument("--router-socket", default=DEFAULT_ROUTER_SOCKET, metavar="PATH",
                        help="UNIX socket of the router front for arduino-router-bridge apps "
                             "(default %(default)s; '' turns it off)")
    parser.add_argument("--router-socket-group", default=DEFAULT_ROUTER_GROUP, metavar="GROUP",
                        help="group that may connect to the router socket, mode 0660 "
                             "(default %(default)s; without that group only root can)")
    parser.add_argument("--router-listen", default=None, metavar="ADDR:PORT",
                        help="also serve the router front on TCP (default: off; unauthenticated, "
                             "keep it on loopback)")
    parser.add_argument("--monitor-listen", default=DEFAULT_MONITOR, metavar="ADDR:PORT",
                        help="the sketch's Serial as a raw TCP stream, both ways (default %(default)s; "
                             "'' turns it off; without a client the output goes to the journal as m4-serial)")
    parser.add_argument("--trace-socket", default=DEFAULT_TRACE_SOCKET, metavar="PATH",
                        help="UNIX socket (mode 0600, root only) where x8-trace reads every message "
                             "on the M4 link (default %(default)s; '' turns it off; nothing is traced "
                             "while no trace client is attached)")
    parser.add_argument("--event-loop", choices=("asyncio", "uvloop", "auto"), default="asyncio",
                        help="Python's own event loop (default), or uvloop (libuv; it loads OpenSSL, "
                             "about 6 MB more memory); auto = uvloop when installed")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return parser


async def _run(config: ProxyConfig) -> int:
    proxy = M4Proxy(config)
    try:
        await proxy.start()
    except StartupError as exc:
        log.error("m4-proxy cannot start: %s", exc)
        return EXIT_STARTUP_FAILED
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    listening = ", ".join(f"{host}:{port}" for host, port in proxy.register_ports)
    calling = ", ".join(f"{host}:{port}" for host, port in proxy.call_ports)
    if proxy.router is not None:
        where = [proxy.router.unix_path or ""]
        if proxy.router.tcp_address is not None:
            where.append("tcp {}:{}".format(*proxy.router.tcp_address))
        log.info("router front: %s", ", ".join(filter(None, where)))
    if proxy.monitor is not None and proxy.monitor.address is not None:
        log.info("monitor port: %s:%d", *proxy.monitor.address)
    if proxy.trace is not None:
        log.info("trace socket: %s", proxy.trace.path)
    log.debug("event loop: %s", type(asyncio.get_running_loop()).__module__)
    log.info("ready: register port %d, call port %d (register on %s; calls on %s), M4 link %s",
             proxy.register_port, proxy.call_port, listening, calling, proxy.link_description)
    notify_ready(f"M4 link {proxy.link_description}; register port {proxy.register_port}, "
                 f"call port {proxy.call_port}")
    await stop.wait()
    notify_stopping()
    log.info("stopping")
    await proxy.stop()
    return 0


def event_loop_runner(choice: str) -> Callable[[Coroutine[Any, Any, int]], int]:
    """``asyncio.run`` or uvloop's: the proxy is callbacks on sockets, where libuv's loop costs
    far less per event than the selector loop; nothing else changes."""
    if choice != "asyncio":
        try:
            uvloop = importlib.import_module("uvloop")
        except ImportError:
            if choice == "uvloop":
                raise
        else:
            run: Callable[[Coroutine[Any, Any, int]], int] = uvloop.run
            return run
    return asyncio.run


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(LOG_IDENTIFIER, verbose=args.verbose)
    config = ProxyConfig(
        device=args.device,
        bind=args.bind,
        register_port=args.register_port,
        call_port=args.call_port,
        call_timeout=args.call_timeout,
        service_timeout=args.service_timeout,
        timeout_error_reply=args.timeout_error_reply,
        m4_error_replies=args.m4_error_replies,
        hold_calls=args.hold_calls,
        registry_file=args.registry_file,
        router_socket=args.router_socket,
        router_socket_group=args.router_socket_group or None,
        router_listen=args.router_listen,
        monitor_listen=args.monitor_listen or None,
        trace_socket=args.trace_socket,
        systemd_sockets=True,  # m4-proxy.socket's router socket, when systemd passes it
    )
    try:
        runner = event_loop_runner(args.event_loop)
    except ImportError as exc:
        log.error("m4-proxy cannot start: --event-loop uvloop: %s", exc)
        return EXIT_STARTUP_FAILED
    try:
        return runner(_run(config))
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    sys.exit(main())
