"""Test helpers shared by several test directories (imported as ``from tests.support... import``)."""
