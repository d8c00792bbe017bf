"""x8manager.proxy (in progress)."""
