"""x8manager.apps (in progress)."""
