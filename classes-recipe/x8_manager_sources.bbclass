# The Python project of this layer's own checkout as SRC_URI entries: one file:// entry per source
# file under the layer's src/, sorted, relative to the layer top (the fetcher recreates the path
# under subdir=${BP}, the default S on every release). The fetcher then checksums exactly the
# package's sources: an edit there changes do_fetch's signature and rebuilds the recipe, while
# what a developer's host leaves beside them (an editable install's src/*.egg-info, __pycache__,
# editor files) changes nothing. Use it as
#   SRC_URI = "... ${@x8_manager_sources(d)}"
# from a recipe two directories below the layer top (recipes-*/<name>/) whose file search path
# includes the layer top (${THISDIR}/../..).

# Host leftovers beside the sources: skipped by name, never fetched.
X8_MANAGER_SOURCES_SKIP_DIRS ?= "__pycache__ *.egg-info .*"
X8_MANAGER_SOURCES_SKIP_FILES ?= "*.pyc *.pyo .* *~"
X8_MANAGER_SOURCES_SKIP_DIRS[doc] = "Directory names (globs) under src/ that are not package sources."
X8_MANAGER_SOURCES_SKIP_FILES[doc] = "File names (globs) under src/ that are not package sources."

# Every directory walked is a parse dependency: a file added or removed there changes the
# directory's mtime, so BitBake re-parses and the list follows.
def x8_manager_sources(d):
    import fnmatch
    import os
    top = os.path.normpath(os.path.join(os.path.dirname(d.getVar("FILE")), "..", ".."))
    skip_dirs = (d.getVar("X8_MANAGER_SOURCES_SKIP_DIRS") or "").split()
    skip_files = (d.getVar("X8_MANAGER_SOURCES_SKIP_FILES") or "").split()
    def skipped(name, patterns):
        return any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns)
    entries = []
    for root, dirs, files in os.walk(os.path.join(top, "src")):
        dirs[:] = sorted(name for name in dirs if not skipped(name, skip_dirs))
        bb.parse.mark_dependency(d, root)
        for name in sorted(files):
            if not skipped(name, skip_files):
                relative = os.path.relpath(os.path.join(root, name), top)
                entries.append("file://%s;subdir=${BP}" % relative)
    if not entries:
        bb.fatal("x8-manager: no Python sources under %s/src" % top)
    return " ".join(entries)
