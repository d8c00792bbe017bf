"""Compatibility shim for tornado 4.5.3 on Python >= 3.10, installed into the legacy venv only.

Python 3.10 removed the ``collections.Mapping``-style aliases of ``collections.abc``. tornado
4.5.3's ``tornado.httputil`` (pulled in by ``tornado.web``, ``tornado.httpclient`` and
``tornado.httpserver``) subclasses ``collections.MutableMapping`` and fails to import without
them. msgpackrpc's own import path (ioloop, iostream, tcpserver) does not need this, but a
container app that also imports tornado's HTTP modules does, and the X8 images run Python 3.11+.
Nothing else is changed.
"""

import collections
import collections.abc

for _name in ("Mapping", "MutableMapping", "Sequence", "MutableSequence", "Callable", "Iterable"):
    if not hasattr(collections, _name):
        setattr(collections, _name, getattr(collections.abc, _name))
