"""x8manager.flasher (in progress)."""
