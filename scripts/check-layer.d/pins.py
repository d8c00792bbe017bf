"""scripts/check-layer's helper: the pinned repositories of a kas file, from $X8_LAYER_MIRRORS or the
network.

    pins.py overlay KASFILE OVERLAY        kas overlay that points every pinned repository at a local
                                           source (kas format 23: url override). From X8_LAYER_MIRRORS,
                                           only the pinned commit is copied (a shallow fetch into
                                           $X8_PINNED_SOURCES/<repo>-<commit>), which also works with
                                           partial mirrors.
    pins.py checkout KASFILE DEST NAME...  work trees DEST/NAME of those repositories at their pins

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


def local_source(sources: str, mirrors: str, name: str, repo: dict[str, Any]) -> str:
    """A git directory holding the pinned commit: a shallow copy from the mirrors, or without
    mirrors from the network (GitHub serves a commit by its SHA)."""
    url, commit, branch = repo["url"], repo["commit"], repo.get("branch")
    dest = os.path.join(sources, f"{name}-{commit[:12]}")
    if not has_commit(dest, commit):
        if mirrors:
            owner, project = urllib.parse.urlparse(url).path.strip("/").removesuffix(".git").split("/")[-2:]
            # Same owner first, then any mirror of a project of that name (lmp-mirrors/bitbake
            # is a copy of openembedded/bitbake); the one that holds the pinned commit wins.
            candidates = [os.path.join(mirrors, f"{owner}+{project}", "repo")]
            candidates += sorted(glob.glob(os.path.join(mirrors, f"*+{project}", "repo")))
            candidates += [os.path.join(mirrors, f"{project}.git"), os.path.join(mirrors, project)]
            found = [c for c in dict.fromkeys(candidates) if os.path.isdir(c) and has_commit(c, commit)]
            if not found:
                sys.exit(f"check-layer: no local mirror of {url} holding {commit} under {mirrors}")
            origin = ["--upload-pack", "git -c uploadpack.allowAnySHA1InWant=true upload-pack",
                      "file://" + os.path.abspath(found[0])]
        else:
            origin = [url]
        os.makedirs(dest, exist_ok=True)
        git("init", "-q", dest)
        fetch = git("fetch", "-q", "--depth", "1", *origin, commit, cwd=dest)
        if fetch.returncode != 0:
            sys.exit(f"check-layer: fetching {commit} from {origin[-1]} failed: {fetch.stderr.strip()}")
    ref = f"refs/heads/{branch or 'pinned'}"
    git("update-ref", ref, commit, cwd=dest)
    git("symbolic-ref", "HEAD", ref, cwd=dest)
    return dest


def write_overlay(repos: Repos, sources: str, mirrors: str, overlay: str) -> None:
    overrides = {}
    if mirrors:
        for name, repo in repos.items():
            if repo.get("url"):
                source = local_source(sources, mirrors, name, repo)
                overrides[name] = {"url": "file://" + os.path.abspath(source)}
    # The check never fetches sources: no network, and a fixed revision wherever a third-party
    # recipe resolves one with `git ls-remote` while parsing: the two ${AUTOREV}s of meta-arduino
    # and meta-arm's ts-sp-fwu, whose SRCREV_tfa is the tag "v2.7.0". Other recipes are untouched.
    fixed = "0" * 40
    offline = "\n".join([
        'BB_NO_NETWORK = "1"',
        f'SRCREV:pn-m-x8h7 = "{fixed}"',
        f'SRCREV:pn-linux-firmware-arduino-portenta-x8-stm32h7 = "{fixed}"',
        f'SRCREV_tfa:pn-ts-sp-fwu = "{fixed}"',
    ]) + "\n"
    with open(overlay, "w") as f:
        yaml.safe_dump({"header": {"version": 23}, "overrides": {"repos": overrides},
                        "local_conf_header": {"zz-check-layer-offline": offline}}, f)


def checkout(repos: Repos, sources: str, mirrors: str, dest: str, names: list[str]) -> None:
    for name in names:
        repo = repos[name]
        source = local_source(sources, mirrors, name, repo)
        tree, commit = os.path.join(dest, name), repo["commit"]
        if git("-C", tree, "rev-parse", "HEAD").stdout.strip() != commit:
            shutil.rmtree(tree, ignore_errors=True)
            clone = git("clone", "-q", "--no-checkout", source, tree)
            if clone.returncode != 0 or git("-C", tree, "checkout", "-q", "--detach", commit).returncode:
                sys.exit(f"check-layer: checking out {name} at {commit} failed: {clone.stderr.strip()}")
        print(f"{name} {repo['commit']}")


def main(argv: list[str]) -> None:
    mirrors = os.environ.get("X8_LAYER_MIRRORS", "")
    sources = os.environ["X8_PINNED_SOURCES"]
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
