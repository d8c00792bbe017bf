"""Package data: the app templates of ``x8-apps new`` (one sub-package per template).

Files ending in ``.tmpl`` are rendered by replacing ``@@KEY@@`` tokens (never ``${...}``, which
belongs to docker compose); ``common`` holds files every template shares.
"""
