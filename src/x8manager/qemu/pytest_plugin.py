"""pytest plugin: one booted virtual machine per session, chosen on the command line.

Options: ``--x8-profile debian|lmp`` (default debian), ``--x8-image-dir DIR`` (the Debian test image,
default ``out/image`` under pytest's rootdir), ``--lmp-image WIC`` and ``--lmp-bios FLASH_BIN`` (the
LmP profile), ``--x8-console-log FILE``. Fixture ``x8_machine``: a :class:`Machine` logged in with
boot finished. When a test that used it fails, the guest's journal of the current boot and the
tail of the serial console are attached to the report.
"""

from __future__ import annotations

import os
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Any, TextIO

import pytest

from .machine import Machine, MachineError, Profile, debian_profile, lmp_profile

CONSOLE_TAIL = 20000


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("x8", "virtual X8 under QEMU (image tests)")
    group.addoption("--x8-profile", choices=("debian", "lmp"), default="debian",
                    help="machine to boot: the Debian test image (default) or an LmP qemuarm64 image")
    group.addoption("--x8-image-dir", type=Path, default=None,
                    help="directory of the Debian test image (default: out/image under the rootdir)")
    group.addoption("--lmp-image", type=Path, default=None, help="LmP .wic for --x8-profile lmp")
    group.addoption("--lmp-bios", type=Path, default=None, help="LmP flash.bin for --x8-profile lmp")
    group.addoption("--x8-console-log", type=Path, default=None,
                    help="write the serial console here (default: out/test-logs/console-PROFILE.log)")


def image_dir(config: pytest.Config) -> Path:
    chosen = config.getoption("--x8-image-dir")
    return Path(chosen) if chosen else Path(config.rootpath) / "out" / "image"


def profile_from_options(config: pytest.Config) -> Profile:
    if config.getoption("--x8-profile") == "lmp":
        wic, bios = config.getoption("--lmp-image"), config.getoption("--lmp-bios")
        if wic is None or bios is None:
            raise pytest.UsageError("--x8-profile lmp needs --lmp-image WIC and --lmp-bios FLASH_BIN")
        return lmp_profile(Path(wic), Path(bios))
    return debian_profile(image_dir(config))


@pytest.fixture(scope="session")
def x8_profile(request: pytest.FixtureRequest) -> Profile:
    try:
        return profile_from_options(request.config)
    except MachineError as exc:
        pytest.fail(str(exc), pytrace=False)


@pytest.fixture(scope="session")
def x8_console_log(request: pytest.FixtureRequest, x8_profile: Profile) -> Iterator[TextIO]:
    chosen = request.config.getoption("--x8-console-log")
    path = Path(chosen) if chosen else (
        Path(request.config.rootpath) / "out" / "test-logs" / f"console-{x8_profile.name}.log")
    # Under pytest-xdist each worker boots its own machine: one log each (console-debian-gw1.log).
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    if worker:
        path = path.with_name(f"{path.stem}-{worker}{path.suffix}")
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8", errors="replace") as log:
        yield log


@pytest.fixture(scope="session")
def x8_machine(x8_profile: Profile, x8_console_log: TextIO) -> Iterator[Machine]:
    machine = Machine(x8_profile, host_forwards={}, console_log=x8_console_log)
    machine.start()
    try:
        machine.wait_ready()
        yield machine
    finally:
        machine.stop()


def _machine_of(funcargs: dict[str, Any]) -> Machine | None:
    """The machine a test used: the ``x8_machine`` fixture, or any fixture holding one as ``.machine``."""
    for value in funcargs.values():
        if isinstance(value, Machine):
            return value
        if isinstance(getattr(value, "machine", None), Machine):
            machine: Machine = value.machine
            return machine
    return None


def _console_tail(item: pytest.Item) -> str | None:
    log = item.funcargs.get("x8_console_log") if hasattr(item, "funcargs") else None
    if log is None or not hasattr(log, "name"):
        return None
    log.flush()
    text = Path(log.name).read_text(errors="replace")
    return text[-CONSOLE_TAIL:]


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, None, None]:
    outcome: Any = yield
    report = outcome.get_result()
    if report.when not in ("call", "setup") or not report.failed:
        return
    machine = _machine_of(getattr(item, "funcargs", {}))
    journal = machine.journal() if machine is not None and machine.console is not None else None
    if journal is not None and not journal.startswith("(journal unavailable"):
        report.sections.append(("guest journal (journalctl -b)", journal))
        return
    # No shell to ask (the machine hung or died): what the console showed last is the evidence.
    tail = _console_tail(item)
    if tail:
        report.sections.append(("serial console (tail)", tail))
