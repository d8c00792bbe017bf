"""The two groups of image tests: scripts/test runs each on its own pytest-xdist worker and guest.

The Docker app scenarios are the longest image tests; they get one guest, the rest the other
(tests/image/conftest.py puts an image test without a group in GROUP).
"""

from __future__ import annotations

GROUP = "virtual-x8"
APPS_GROUP = "virtual-x8-apps"
