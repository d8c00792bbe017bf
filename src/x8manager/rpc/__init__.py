"""x8manager.rpc (in progress)."""
