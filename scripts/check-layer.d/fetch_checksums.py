"""scripts/check-layer's helper, run inside the kas build environment: lists the files (with
checksums) whose contents feed a recipe's do_fetch signature, as BitBake's signature generator
computes them: proof that an edit under src/ rebuilds x8-manager, and that host leftovers do not.

    fetch_checksums.py RECIPE
"""

from __future__ import annotations

import os
import shutil
import sys

# BitBake's library sits beside the bitbake program the build environment put on PATH.
BITBAKE = os.path.realpath(shutil.which("bitbake") or "bitbake")
sys.path.insert(0, os.path.join(os.path.dirname(BITBAKE), "..", "lib"))
import bb.fetch2  # noqa: E402
import bb.tinfoil  # noqa: E402


def main(recipe: str) -> None:
    with bb.tinfoil.Tinfoil() as tinfoil:
        tinfoil.prepare(config_only=False, quiet=2)
        d = tinfoil.parse_recipe(recipe)
        exclude = (d.getVar("BB_SIGNATURE_LOCAL_DIRS_EXCLUDE") or "").split()
        file_list = d.getVarFlag("do_fetch", "file-checksums")
        for path, checksum in bb.fetch2.get_file_checksums(file_list, d.getVar("PN"), exclude):
            print(checksum, path)


if __name__ == "__main__":
    main(sys.argv[1])
