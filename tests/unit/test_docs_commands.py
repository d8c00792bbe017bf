"""The commands in README.md and docs/*.md run as written.

Every fenced block is read by its info string:

- ```` ```sh ````: runs here, as written, in a scratch folder with the project's console scripts on
  PATH (exit 0 expected);
- ```` ```sh device|network|long|build ````: needs a device or the virtual X8, the network, a long run
  (builds, servers, benchmarks) or a build output; not run, but every program must be a real console
  script, script or known tool, and every ``--flag`` given to our programs must be in their ``--help``;
- ```` ```sh usage ````: a synopsis; its program and ``--flags`` are checked the same way;
- ```` ```python ```` compiles, ```` ```yaml ```` parses; other languages are text.
"""

from __future__ import annotations

import functools
import os
import re
import shlex
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SH_TAGS = {"device", "network", "long", "build", "usage"}
CONSOLE_SCRIPTS = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"])
# Programs that are not ours: named in the docs, their flags are their own business.
KNOWN_TOOLS = {"git", "pip", "kas", "cd", "export", "nc", "journalctl", "systemctl", "ssh", "docker",
               "curl", "arduino-cli", "fioctl", "sudo", "python", "python3"}
# `x8 doctor ARG...` and `x8 trace ARG...` hand their arguments to the device's own tool.
PASSED_THROUGH = {("x8", "doctor"): "x8-doctor", ("x8", "trace"): "x8-trace"}
# Shell scripts hand their arguments on: quickstart to run-x8, test to pytest.
SHELL_SCRIPT_ARGS = {"scripts/quickstart": ["scripts/run-x8"], "scripts/test": ["-m", "pytest"]}
# Arguments naming a file of this repository (a fixture, a kas file) must name one that exists.
REPO_PATHS = ("tests/", "scripts/", "docs/", "kas/")
FLAG = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]*")
FENCE = re.compile(r"^```([^\n`]*)\n(.*?)^```\s*$", re.MULTILINE | re.DOTALL)


@dataclass(frozen=True)
class Block:
    page: str
    line: int
    lang: str
    tags: frozenset[str]
    text: str

    def __str__(self) -> str:
        return f"{self.page}:{self.line}"


def blocks() -> Iterator[Block]:
    for path in DOCS:
        source = path.read_text(encoding="utf-8")
        for match in FENCE.finditer(source):
            words = match.group(1).split()
            if not words:
                continue
            yield Block(str(path.relative_to(ROOT)), source.count("\n", 0, match.start()) + 1,
                        words[0], frozenset(words[1:]), match.group(2))


ALL = list(blocks())
SH = [b for b in ALL if b.lang == "sh"]


def logical_lines(text: str) -> list[str]:
    """Lines with backslash continuations joined, comments and blank lines dropped."""
    lines = text.replace("\\\n", " ").splitlines()
    return [line for line in lines if line.strip() and not line.lstrip().startswith("#")]


def commands(line: str) -> list[list[str]]:
    """The simple commands of one shell line (split at && || ; |), comments dropped."""
    lexer = shlex.shlex(line, posix=True, punctuation_chars=";&|")
    lexer.whitespace_split = True
    lexer.commenters = "#"
    result: list[list[str]] = [[]]
    for token in lexer:
        if token in {"&&", "||", ";", "|", "&"}:
            result.append([])
        else:
            result[-1].append(token)
    return [argv for argv in result if argv]


def program(argv: list[str]) -> tuple[str, list[str]]:
    """The program a command runs (env assignments, sudo and the venv's python taken off) and its args."""
    argv = list(argv)
    while argv and (re.fullmatch(r"[A-Z_][A-Z0-9_]*=\S*", argv[0]) or argv[0] == "sudo"):
        argv.pop(0)
    if not argv:
        return "", []
    head = argv[0].removeprefix(".venv/bin/")
    if head in {"python", "python3"} and len(argv) > 1 and argv[1].startswith("scripts/"):
        return argv[1], argv[2:]
    return head, argv[1:]


def leading_words(args: list[str]) -> list[str]:
    words = []
    for arg in args:
        if not re.fullmatch(r"[a-z][a-z0-9-]*", arg):
            break
        words.append(arg)
    return words


@functools.cache
def help_text(*argv: str) -> str:
    """``ARGV --help`` (console scripts from the venv), or '' when it is not a help request it knows."""
    name, *rest = argv
    if name in CONSOLE_SCRIPTS:
        command = [str(VENV_BIN / name), *rest, "--help"]
    elif name.startswith("scripts/"):
        command = [sys.executable, str(ROOT / name), *rest, "--help"]
    else:
        command = [sys.executable, *rest, "--help"]
    env = {**os.environ, "COLUMNS": "200"}
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, env=env, timeout=120,
                          check=False)
    return done.stdout if done.returncode == 0 else ""


def helps_for(name: str, args: list[str]) -> str:
    """The help texts of the program and of every subcommand path its leading words name."""
    if name.startswith("scripts/") and not is_python(ROOT / name):
        passed = SHELL_SCRIPT_ARGS.get(name)
        if passed is None:
            return (ROOT / name).read_text()
        return help_text("python", *passed) if passed[0] == "-m" else help_text(passed[0])
    words = leading_words(args)
    if (name, words[0] if words else "") in PASSED_THROUGH:
        return help_text(PASSED_THROUGH[(name, words[0])])
    texts = [help_text(name)]
    for end in range(1, len(words) + 1):
        texts.append(help_text(name, *words[:end]))
    return "\n".join(texts)


def is_python(path: Path) -> bool:
    return path.read_text(errors="replace").startswith("#!/usr/bin/env python")


def check_program(block: Block, name: str, args: list[str], flags: list[str]) -> list[str]:
    """What is wrong with one command of a checked block: an unknown program or a flag its help lacks."""
    if name in KNOWN_TOOLS and not (name in {"python", "python3"} and args[:1] == ["-m"]):
        return []
    if name in {"python", "python3"}:  # python -m MODULE: the module exists
        module = args[1] if len(args) > 1 else ""
        found = subprocess.run([sys.executable, "-c", f"import importlib.util as u, sys; "
                                f"sys.exit(u.find_spec({module!r}) is None)"], cwd=ROOT, check=False)
        return [] if found.returncode == 0 else [f"{block}: no module {module!r}"]
    if name.startswith("scripts/"):
        if not (ROOT / name).is_file():
            return [f"{block}: no script {name}"]
    elif name not in CONSOLE_SCRIPTS:
        return [f"{block}: {name!r} is neither a console script of pyproject.toml, a script nor a known tool"]
    text = helps_for(name, args)
    return [f"{block}: {name} {' '.join(leading_words(args))}: no {flag} in its --help"
            for flag in flags if not re.search(re.escape(flag) + r"(?![\w-])", text)]


def problems(block: Block) -> list[str]:
    found = []
    if "usage" in block.tags:  # a synopsis: indented lines continue the one above; `a | b` are alternatives
        for raw in re.sub(r"\n[ \t]+", " ", block.text).splitlines():
            line = re.sub(r"(^|\s)#.*", "", raw)
            if line.strip():
                name, args = program(line.replace("[", " ").replace("]", " ").split())
                found += check_program(block, name, args, FLAG.findall(line))
        return found
    for line in logical_lines(block.text):
        for argv in commands(line):
            name, args = program(argv)
            flags = [arg.split("=", 1)[0] for arg in args if FLAG.fullmatch(arg.split("=", 1)[0])]
            found += check_program(block, name, args, flags)
            found += [f"{block}: {arg} is not in the repository" for arg in args
                      if arg.startswith(REPO_PATHS) and not (ROOT / arg).exists()]
    return found


def test_every_block_has_a_known_info_string() -> None:
    unknown = [f"{b}: sh {' '.join(sorted(b.tags - SH_TAGS))}" for b in SH if b.tags - SH_TAGS]
    unknown += [f"{b}: sh with two tags" for b in SH if len(b.tags) > 1]
    known = ", ".join(sorted(SH_TAGS))
    assert not unknown, f"unknown info strings (use one of {known}):\n" + "\n".join(unknown)
    assert SH, "no ```sh blocks found: the extraction is broken"


def test_every_command_names_a_real_program_and_real_flags() -> None:
    wrong = [problem for block in SH for problem in problems(block)]
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize("block", [b for b in SH if not b.tags], ids=str)
def test_commands_that_can_run_here_run_as_written(block: Block, tmp_path: Path) -> None:
    env = {**os.environ, "PATH": f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}"}
    done = subprocess.run(["bash", "-euo", "pipefail", "-c", block.text], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=240, check=False)
    assert done.returncode == 0, f"{block} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}"


@pytest.mark.parametrize("block", [b for b in ALL if b.lang == "python"], ids=str)
def test_python_examples_compile(block: Block) -> None:
    compile(block.text, str(block), "exec")


@pytest.mark.parametrize("block", [b for b in ALL if b.lang == "yaml"], ids=str)
def test_yaml_examples_parse(block: Block) -> None:
    assert isinstance(yaml.safe_load(block.text), dict), block
