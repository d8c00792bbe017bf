"""scripts/check-layer's helper: the pinned repositories of a kas file, from $X8_LAYER_MIRRORS or the
network.

    pins.py overlay KASFILE OVERLAY        kas overlay that points every pinned repository at a local
                                           source (kas format 23: url override). From X8_LAYER_MIRRORS,
                                           only the pinned commit is copied (a shallow fetch into
                                           $X8_PINNED_SOURCES/<repo>-<commit>), which also works with
                                           partial mirrors.
    pins.py checkout KASFILE DEST NAME...  work trees DEST/NAME of those repositories at their pins
    pins.py offline-conf                   the local.conf lines that keep a parse offline

A pinned commit that no mirror holds fails the check, unless STAND_INS names a stand-in for it: then
the stand-in commit is used and a line "stand-in: ..." says so on stderr (check-layer puts it in
its summary).

Runs with kas's Python (it has PyYAML); standard library otherwise.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys
import urllib.parse
from typing import Any

import yaml

Repos = dict[str, dict[str, Any]]

# Pinned commits that the local mirrors lack, and what stands in for them (offline only; the kas
# files keep the real pins). Each stand-in says why and what was changed.
STAND_INS: dict[str, dict[str, str]] = {
    # lmp-manifest main pins meta-security 8028c573 (its wrynose compat); the newest snapshot of
    # lmp-mirrors/meta-security here is master 9e6d9622 (2026-01-16, LAYERSERIES_COMPAT
    # "whinlatter"), and no other public copy holds 8028c573. BitBake refuses a layer whose
    # LAYERSERIES_COMPAT lacks the core's series before any local.conf is read, so the stand-in
    # commits "wrynose" into every conf/layer.conf of it.
    "8028c573db6923525c2918724f2bd36d4a420e0b": {
        "commit": "9e6d962250aab6e5319215f15b0201ef233c46cd",
        "add-series": "wrynose",
        "why": "lmp-mirrors/meta-security 8028c573 (wrynose) is in no mirror here",
    },
}


def load(kas_file: str) -> Repos:
    """The repos of a kas file after its includes (paths relative to the repository root)."""
    with open(kas_file) as f:
        data = yaml.safe_load(f)
    repos: Repos = {}
    base = os.path.dirname(os.path.dirname(os.path.abspath(kas_file)))
    for include in data.get("header", {}).get("includes", []):
        for name, repo in load(os.path.join(base, include)).items():
            repos.setdefault(name, {}).update(repo or {})
    for name, repo in (data.get("repos") or {}).items():
        repos.setdefault(name, {}).update(repo or {})
    return repos


def git(*args: str, cwd: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=False)


def has_commit(directory: str, commit: str) -> bool:
    return git("-C", directory, "cat-file", "-e", f"{commit}^{{commit}}").returncode == 0


def standin_commit(dest: str, base: str, series: str) -> str:
    """A commit on top of base that adds series to every LAYERSERIES_COMPAT of the repository."""
    git("checkout", "-q", "--detach", base, cwd=dest)
    for layer_conf in sorted(glob.glob(os.path.join(dest, "**", "conf", "layer.conf"), recursive=True)):
        with open(layer_conf) as f:
            lines = f.read().splitlines(keepends=True)
        with open(layer_conf, "w") as f:
            for line in lines:
                if line.startswith("LAYERSERIES_COMPAT_") and series not in line.split("=", 1)[1].split():
                    f.write(line.rstrip().removesuffix('"') + f' {series}"\n')
                else:
                    f.write(line)
    git("-c", "user.name=check-layer", "-c", "user.email=check-layer@localhost", "commit", "-q", "-a",
        "-m", f"check-layer stand-in: LAYERSERIES_COMPAT += {series}", cwd=dest)
    return git("rev-parse", "HEAD", cwd=dest).stdout.strip()


def local_source(sources: str, mirrors: str, name: str, repo: dict[str, Any]) -> tuple[str, str]:
    """A git directory holding the pinned commit, and that commit: a shallow copy from the
    mirrors, or without mirrors from the network (GitHub serves a commit by its SHA). A pin that
    no mirror holds is replaced by its STAND_INS entry, if it has one."""
    url, commit, branch = repo["url"], repo["commit"], repo.get("branch")
    dest = os.path.join(sources, f"{name}-{commit[:12]}")
    stand_in = STAND_INS.get(commit)
    if stand_in and os.path.isfile(os.path.join(dest, ".stand-in")):
        with open(os.path.join(dest, ".stand-in")) as f:
            commit = f.read().strip()
    if not has_commit(dest, commit):
        if mirrors:
            owner, project = urllib.parse.urlparse(url).path.strip("/").removesuffix(".git").split("/")[-2:]
            # Same owner first, then any mirror of a project of that name (lmp-mirrors/bitbake
            # is a copy of openembedded/bitbake); the one that holds the pinned commit wins.
            candidates = [os.path.join(mirrors, f"{owner}+{project}", "repo")]
            candidates += sorted(glob.glob(os.path.join(mirrors, f"*+{project}", "repo")))
            candidates += [os.path.join(mirrors, f"{project}.git"), os.path.join(mirrors, project)]
            candidates = [c for c in dict.fromkeys(candidates) if os.path.isdir(c)]
            found = [c for c in candidates if has_commit(c, commit)]
            wanted = commit
            if not found and stand_in:
                wanted = stand_in["commit"]
                found = [c for c in candidates if has_commit(c, wanted)]
            if not found:
                sys.exit(f"check-layer: no local mirror of {url} holding {commit} under {mirrors}")
            origin = ["--upload-pack", "git -c uploadpack.allowAnySHA1InWant=true upload-pack",
                      "file://" + os.path.abspath(found[0])]
        else:
            origin, wanted = [url], commit
        shutil.rmtree(dest, ignore_errors=True)
        os.makedirs(dest, exist_ok=True)
        git("init", "-q", dest)
        fetch = git("fetch", "-q", "--depth", "1", *origin, wanted, cwd=dest)
        if fetch.returncode != 0:
            sys.exit(f"check-layer: fetching {wanted} from {origin[-1]} failed: {fetch.stderr.strip()}")
        if wanted != commit and stand_in:
            commit = standin_commit(dest, wanted, stand_in["add-series"])
            with open(os.path.join(dest, ".stand-in"), "w") as f:
                f.write(commit + "\n")
    if stand_in and commit != repo["commit"]:
        print(f"stand-in: {name} {repo['commit'][:12]} -> {stand_in['commit'][:12]} + "
              f"LAYERSERIES_COMPAT += {stand_in['add-series']} ({stand_in['why']})", file=sys.stderr)
    ref = f"refs/heads/{branch or 'pinned'}"
    git("update-ref", ref, commit, cwd=dest)
    git("symbolic-ref", "HEAD", ref, cwd=dest)
    return dest, commit


def offline_conf() -> str:
    """The check never fetches sources: no network, and a fixed revision wherever a third-party
    recipe resolves one with `git ls-remote` while parsing: the two ${AUTOREV}s of meta-arduino
    and meta-arm's ts-sp-fwu, whose SRCREV_tfa is the tag "v2.7.0". Other recipes are untouched."""
    fixed = "0" * 40
    return "\n".join([
        'BB_NO_NETWORK = "1"',
        f'SRCREV:pn-m-x8h7 = "{fixed}"',
        f'SRCREV:pn-linux-firmware-arduino-portenta-x8-stm32h7 = "{fixed}"',
        f'SRCREV_tfa:pn-ts-sp-fwu = "{fixed}"',
    ]) + "\n"


def write_overlay(repos: Repos, sources: str, mirrors: str, overlay: str) -> None:
    overrides = {}
    if mirrors:
        for name, repo in repos.items():
            if repo.get("url"):
                source, commit = local_source(sources, mirrors, name, repo)
                overrides[name] = {"url": "file://" + os.path.abspath(source)}
                if commit != repo["commit"]:
                    overrides[name]["commit"] = commit
    with open(overlay, "w") as f:
        yaml.safe_dump({"header": {"version": 23}, "overrides": {"repos": overrides},
                        "local_conf_header": {"zz-check-layer-offline": offline_conf()}}, f)


def checkout(repos: Repos, sources: str, mirrors: str, dest: str, names: list[str]) -> None:
    for name in names:
        repo = repos[name]
        source, commit = local_source(sources, mirrors, name, repo)
        tree = os.path.join(dest, name)
        if git("-C", tree, "rev-parse", "HEAD").stdout.strip() != commit:
            shutil.rmtree(tree, ignore_errors=True)
            clone = git("clone", "-q", "--no-checkout", source, tree)
            if clone.returncode != 0 or git("-C", tree, "checkout", "-q", "--detach", commit).returncode:
                sys.exit(f"check-layer: checking out {name} at {commit} failed: {clone.stderr.strip()}")
        print(f"{name} {commit}")


def main(argv: list[str]) -> None:
    mirrors = os.environ.get("X8_LAYER_MIRRORS", "")
    sources = os.environ["X8_PINNED_SOURCES"]
    if argv == ["offline-conf"]:
        print(offline_conf(), end="")
        return
    mode, kas_file, *rest = argv
    repos = load(kas_file)
    if mode == "overlay" and len(rest) == 1:
        write_overlay(repos, sources, mirrors, rest[0])
    elif mode == "checkout" and len(rest) >= 2:
        checkout(repos, sources, mirrors, rest[0], rest[1:])
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main(sys.argv[1:])
