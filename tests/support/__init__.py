"""Test helpers shared across test directories (imported as ``from tests.support... import``)."""
