"""pytest fixtures of the flasher integration tests (defined in flasher_daemon_rig)."""

from flasher_daemon_rig import rig

__all__ = ["rig"]
