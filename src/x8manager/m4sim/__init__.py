"""x8manager.m4sim (in progress)."""
