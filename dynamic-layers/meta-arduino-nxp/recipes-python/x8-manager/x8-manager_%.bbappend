# With meta-arduino-nxp (the layer of Arduino's stm32h7-program.service): x8-manager-flasher brings
# a drop-in that makes that unit take the H7 programming lock. It copies Arduino's ExecStart, so it
# belongs only where Arduino's unit comes from; see the file.
FILESEXTRAPATHS:prepend := "${THISDIR}/files:"

SRC_URI += "file://stm32h7-program-swd-lock.conf;subdir=${BP}/units"

do_install:append() {
    install -D -m 0644 ${S}/units/stm32h7-program-swd-lock.conf \
        ${D}${systemd_system_unitdir}/stm32h7-program.service.d/x8-manager-swd-lock.conf
}

FILES:${PN}-flasher += "${systemd_system_unitdir}/stm32h7-program.service.d/x8-manager-swd-lock.conf"
# The drop-in runs flock(1).
RDEPENDS:${PN}-flasher += "util-linux-flock"
