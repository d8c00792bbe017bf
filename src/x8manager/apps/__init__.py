"""``x8-apps``: scaffold, lint and run Docker compose apps that talk to the M4.

- :mod:`.scaffold` writes a new app in containers.git layout from the packaged templates.
- :mod:`.lint` checks compose files: YAML, the Compose specification, then the X8 rules in :mod:`.rules`.
- :mod:`.device` runs ``docker compose`` for the apps on a device, respecting aktualizr-lite.
- :mod:`.rpcview` shows which procedures each app registered with ``m4-proxy``.
"""
