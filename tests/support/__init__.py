"""Test helpers shared across test directories (imported as ``tests.support``)."""
