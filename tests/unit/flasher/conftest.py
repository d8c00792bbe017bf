"""pytest fixtures of the flasher unit tests (defined in flasher_unit_support)."""

from flasher_unit_support import flasher, standin_env

__all__ = ["flasher", "standin_env"]
