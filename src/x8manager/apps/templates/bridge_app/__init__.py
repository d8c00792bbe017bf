"""Template files (package data)."""
