"""``x8 doctor``: find which layer of the M4 RPC path is broken, bottom-up, and say how to fix it.

Layers, checked in this order, stopping at the first broken one: the H7 side (firmware
programmer, firmware version, x8h7 modules, ``/dev/x8h7_ui``), the proxy, the sketch, the apps.
Every file it reads (/proc, /sys, /dev, /run, /var) is taken relative to a root, so tests lay the
X8's artefacts out in a temporary directory.
"""

from x8manager.doctor.findings import Finding, Report, Status

__all__ = ["Finding", "Report", "Status"]
