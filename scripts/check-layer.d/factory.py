"""scripts/check-layer's helper: a checkout shaped like a FoundriesFactory's, with this layer added by
the documentation's "Add it to a FoundriesFactory" steps, word for word.

    factory.py prepare NAME WORK     lays out the Factory NAME (see FACTORIES) in WORK
    factory.py prepare NAME WORK --control
                                     the same Factory before the steps: the control run that
                                     shows what the other layers report without this one
    factory.py steps                 prints the steps as read from the documentation

The layout is what `repo init` + `repo sync` of a Factory's lmp-manifest gives, from local mirrors:
WORK/.repo/manifests is the Factory's lmp-manifest (LmP's or the partner's manifest at the kas pin,
plus the <factory>.xml and conf/bblayers-factory.inc a new Factory starts with), every project of
<factory>.xml is checked out at its path and pinned revision, and layers/meta-subscriber-overrides
is the Factory's own layer as the factory template lays it out: conf/layer.conf(.in) and an empty
conf/machine/include/lmp-factory-custom.inc from check-layer.d/meta-subscriber-overrides/, and
recipes-samples/images/lmp-factory-image.bb as Foundries' template has it, taken at check time from
the copy Arduino's partner layer ships (meta-arduino-lmp, at the kas pin). Then the documented
steps edit those files, and "repo sync" checks out what step 1 added: this layer, as a clean
export of the files git tracks. check-layer then runs the manifest's own
setup-environment-internal and BitBake.

Runs with kas's Python; standard library otherwise (and pins.py beside it).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import pins

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = Path(__file__).resolve().parent / "meta-subscriber-overrides"
# The docs page that holds the Factory steps, else README (the docs split moves them).
STEP_SOURCES = (ROOT / "docs" / "layer.md", ROOT / "README.md")
STEP_HEADING = re.compile(r"^#+ Add it to a FoundriesFactory\s*$")
FACTORY_XML = "factory.xml"
IMAGE_RECIPE = "recipes-samples/images/lmp-factory-image.bb"


@dataclass(frozen=True)
class Factory:
    kas: str  # the kas file whose lmp-manifest pin is the Factory's manifest
    include: str  # what <factory>.xml includes: the manifest's entry point
    machine: str
    distro: str
    series: str


FACTORIES = {
    # An Arduino Portenta X8 Factory: Arduino's lmp-manifest (LmP v95.3, scarthgap) with meta-arduino.
    "factory-scarthgap": Factory(
        "kas/portenta-x8.yml", "arduino.xml", "portenta-x8", "lmp-xwayland", "scarthgap"
    ),
    # A Factory on LmP main (wrynose): Arduino has no wrynose layers, so LmP's manifest and its
    # arm64 QEMU machine. Not qemuarm64-secureboot: at these pins LmP main cannot parse it (meta-lmp's
    # KERNEL_CLASSES:qemuarm64 = "kernel-lmp-fitimage" inherits oe-core's kernel-fitimage class, which
    # oe-core removed before wrynose); its EBBR variant, meta-lmp-bsp's own machine, does not use it.
    "factory-wrynose": Factory(
        "kas/qemuarm64-secureboot-wrynose.yml", "default.xml", "qemuarm64-secureboot-ebbr", "lmp", "wrynose"
    ),
}


@dataclass(frozen=True)
class Edit:
    context: str  # "lmp-manifest" or "meta-subscriber-overrides"
    path: str  # the file, relative to the context
    text: str  # the line or XML element the step adds


def step_text() -> tuple[Path, list[str]]:
    """The numbered steps of the Factory section, one string each."""
    for source in STEP_SOURCES:
        if not source.is_file():
            continue
        lines = source.read_text().splitlines()
        starts = [i for i, line in enumerate(lines) if STEP_HEADING.match(line)]
        if not starts:
            continue
        section: list[str] = []
        for line in lines[starts[0] + 1:]:
            if line.startswith("#"):
                break
            section.append(line)
        steps: list[str] = []
        for line in section:
            if re.match(r"^\d+\. ", line):
                steps.append(line)
            elif steps and line.startswith("   "):
                steps[-1] += "\n" + line
        if steps:
            return source, steps
    sys.exit("check-layer: no 'Add it to a FoundriesFactory' steps in docs/layer.md or README.md")


def is_path(span: str) -> bool:
    return " " not in span and "=" not in span and (
        "/" in span or span.endswith((".xml", ".inc", ".bb", ".conf"))
    )


def edits(steps: list[str]) -> list[Edit]:
    """The file edits the steps describe: each code span that is not a path or a context is
    content for a file: the file named right after it ("`X` in `file`") or else the last file
    named before it ("`file`: `X`"); paths are relative to the last named context (the
    factory's `lmp-manifest` or `meta-subscriber-overrides`)."""
    result: list[Edit] = []
    context = ""
    for step in steps:
        spans = [(m.group(1), m.end()) for m in re.finditer(r"`([^`]+)`", step)]
        last_file = ""
        for i, (span, end) in enumerate(spans):
            if span in ("lmp-manifest", "meta-subscriber-overrides"):
                context = span
            elif is_path(span):
                last_file = span
            else:
                target = last_file
                if re.match(r"\s+in\s+`", step[end:]) and i + 1 < len(spans) and is_path(spans[i + 1][0]):
                    target = spans[i + 1][0]
                if not target or not context:
                    sys.exit(f"check-layer: cannot tell which file gets `{span}` in step:\n{step}")
                result.append(Edit(context, target, span))
    return result


def run(*args: str, cwd: Path | None = None) -> None:
    subprocess.run(args, cwd=cwd, check=True, capture_output=True, text=True)


def export_layer(dest: Path) -> None:
    """The files git tracks or would track (nothing git-ignored: out/ holds nested checkouts)."""
    files = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT, check=True, capture_output=True,
    ).stdout.split(b"\0")
    shutil.rmtree(dest, ignore_errors=True)
    for name in filter(None, files):
        source = ROOT / os.fsdecode(name)
        if source.is_file():
            target = dest / os.fsdecode(name)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)


def manifest_projects(manifests: Path, name: str) -> list[dict[str, str]]:
    """The projects of a repo manifest file and its includes: name, path, url, revision."""
    root = ET.parse(manifests / name).getroot()
    projects: list[dict[str, str]] = []
    remotes = {r.get("name", ""): r.get("fetch", "") for r in root.iter("remote")}
    default = root.find("default")
    default_remote = default.get("remote", "") if default is not None else ""
    default_revision = default.get("revision", "") if default is not None else ""
    for element in root:
        if element.tag == "include":
            projects += manifest_projects(manifests, element.get("name", ""))
        elif element.tag == "project":
            remote = element.get("remote", default_remote)
            project = element.get("name", "")
            projects.append({
                "name": project,
                "path": element.get("path", project),
                "url": remotes.get(remote, f"<remote {remote}>").rstrip("/") + "/" + project,
                "revision": element.get("revision", default_revision),
            })
    return projects


def prepare(name: str, work: Path, control: bool = False) -> None:
    factory = FACTORIES[name]
    mirrors = os.environ.get("X8_LAYER_MIRRORS", "")
    sources = os.environ["X8_PINNED_SOURCES"]
    repos = pins.load(str(ROOT / factory.kas))
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)

    # repo init: the Factory's lmp-manifest, which starts as the LmP (or partner) manifest plus
    # <factory>.xml and conf/bblayers-factory.inc.
    source, commit = pins.local_source(sources, mirrors, "lmp-manifest", repos["lmp-manifest"])
    manifests = work / ".repo" / "manifests"
    run("git", "clone", "-q", "--no-checkout", source, str(manifests))
    run("git", "checkout", "-q", "-b", "main", commit, cwd=manifests)
    print(f"manifest: {repos['lmp-manifest']['url']} {commit} ({factory.include})")
    (manifests / FACTORY_XML).write_text(
        '<?xml version="1.0" encoding="UTF-8"?>\n<manifest>\n'
        f'  <include name="{factory.include}"/>\n'
        '  <remote name="fio-factory" fetch="https://source.foundries.io/factories/check-layer"/>\n'
        '  <project name="meta-subscriber-overrides" path="layers/meta-subscriber-overrides" '
        'remote="fio-factory" revision="main"/>\n'
        '</manifest>\n'
    )
    (manifests / "conf" / "bblayers-factory.inc").write_text(
        'BASELAYERS += "${OEROOT}/layers/meta-subscriber-overrides"\n'
    )
    overrides = work / "layers" / "meta-subscriber-overrides"
    shutil.copytree(TEMPLATE, overrides)
    arduino, arduino_commit = pins.local_source(
        sources, mirrors, "meta-arduino", pins.load(str(ROOT / "kas" / "portenta-x8.yml"))["meta-arduino"]
    )
    image = overrides / IMAGE_RECIPE
    image.parent.mkdir(parents=True)
    image.write_text(subprocess.run(
        ["git", "show", f"{arduino_commit}:meta-arduino-lmp/{IMAGE_RECIPE}"],
        cwd=arduino, check=True, capture_output=True, text=True,
    ).stdout)
    print(f"template: {IMAGE_RECIPE} from meta-arduino {arduino_commit} meta-arduino-lmp/")
    # Stored as layer.conf.in: a conf/layer.conf inside this layer is a second layer to
    # yocto-check-layer's discovery.
    template = overrides / "conf" / "layer.conf.in"
    (overrides / "conf" / "layer.conf").write_text(template.read_text().replace("@SERIES@", factory.series))
    template.unlink()

    # The documented steps, word for word.
    doc, steps = step_text()
    if control:
        print(f"control: the steps of {doc.relative_to(ROOT)} not applied "
              "(the Factory without meta-x8-manager)")
        steps = []
    head = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=ROOT, check=True, capture_output=True, text=True
    ).stdout.strip()
    roots = {"lmp-manifest": manifests, "meta-subscriber-overrides": overrides}
    for edit in edits(steps):
        path = roots[edit.context] / (FACTORY_XML if edit.path == "<factory>.xml" else edit.path)
        path.parent.mkdir(parents=True, exist_ok=True)
        text = path.read_text() if path.exists() else ""
        if edit.text.startswith("<"):
            # The step's one placeholder, filled in as a user does: the commit to build.
            element = edit.text.replace("<commit SHA>", head)
            text = text.replace("</manifest>", f"  {element}\n</manifest>")
        else:
            text += ("" if text.endswith("\n") or not text else "\n") + edit.text + "\n"
        path.write_text(text)
        print(f"step ({doc.relative_to(ROOT)}): {edit.context}/{edit.path} += {edit.text}")

    # repo sync: every project of <factory>.xml at its path and revision.
    projects = manifest_projects(manifests, FACTORY_XML)
    for project in projects:
        pinned = (repos.get(project["name"]) or {}).get("commit")
        if pinned:
            agree = "agrees" if pinned == project["revision"] else f"DIFFERS (kas: {pinned})"
            print(f"pin: {project['name']} {project['revision']} {agree} with {factory.kas}")
    for project in projects:
        path = work / project["path"]
        if project["name"] == "meta-subscriber-overrides":
            continue
        if project["name"] == "meta-x8-manager":
            export_layer(path)
            print(f"project: {project['name']} -> {project['path']} (this checkout, clean export)")
            continue
        try:
            source, commit = pins.local_source(
                sources, mirrors, project["name"], {"url": project["url"], "commit": project["revision"]}
            )
        except SystemExit as missing:
            if project["path"].startswith("layers/"):
                raise
            # lmp-tools: helper scripts and the STM32MP signing keys, not a layer.
            print(f"project: {project['name']} -> {project['path']} not checked out ({missing})")
            continue
        run("git", "clone", "-q", "--no-checkout", source, str(path))
        run("git", "checkout", "-q", "--detach", commit, cwd=path)
        print(f"project: {project['name']} -> {project['path']} {commit}")
    # The manifest's own layer lists, for the summary.
    print(f"machine: {factory.machine} distro: {factory.distro}")


def main(argv: list[str]) -> None:
    if argv[:1] == ["prepare"] and len(argv) in (3, 4) and argv[1] in FACTORIES \
            and argv[3:] in ([], ["--control"]):
        prepare(argv[1], Path(argv[2]), control=argv[3:] == ["--control"])
    elif argv == ["steps"]:
        doc, steps = step_text()
        for edit in edits(steps):
            print(f"{doc.relative_to(ROOT)}: {edit.context}/{edit.path} += {edit.text}")
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main(sys.argv[1:])
