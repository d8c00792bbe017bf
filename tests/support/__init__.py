"""Test helpers shared across parts (imported as ``from tests.support import ...``)."""
