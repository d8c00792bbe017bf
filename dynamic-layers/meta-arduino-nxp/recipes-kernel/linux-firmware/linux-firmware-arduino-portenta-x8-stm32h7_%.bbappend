# Inert unless the distro opts in with DISTRO_FEATURES "x8-manager"
# (then linux-firmware-arduino-portenta-x8-stm32h7-x8-manager.inc).
require ${@bb.utils.contains('DISTRO_FEATURES', 'x8-manager', '${BPN}-x8-manager.inc', '', d)}
