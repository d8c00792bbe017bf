"""``x8-trace`` / ``x8 trace``: every message on the M4 link, both ways, live from the proxy's tap.

The proxy (x8manager.proxy.tap) serves the events on its trace socket; this package reads,
filters and prints them. It imports nothing of the proxy: the socket's JSON lines are the contract
(docs/architecture.md, "Trace tap").
"""
