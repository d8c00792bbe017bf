# nooelint: oelint.var.bbclassextend - configuration files of target services
SUMMARY = "/etc/default files of m4-proxy.service and m4-flasher.service"
DESCRIPTION = "The environment files m4-proxy.service and m4-flasher.service read, in a recipe \
               of their own (as meta-rauc's rauc-conf): set M4_PROXY_ARGS or M4_FLASHER_ARGS \
               in an x8-manager-conf.bbappend, or replace the files there, without rebuilding \
               the Python package."
HOMEPAGE = "https://github.com/meta-x8-manager/meta-x8-manager"
BUGTRACKER = "https://github.com/meta-x8-manager/meta-x8-manager/issues"
SECTION = "base"
LICENSE = "MIT"
# nooelint: oelint.var.licenseremotefile - two files of this layer, under the layer's MIT license
LIC_FILES_CHKSUM = "file://${COMMON_LICENSE_DIR}/MIT;md5=0835ade698e0bcf8506ecda2f7b4f302"

# The files document the defaults, all commented out. subdir=${BP} puts them in the default S on
# every release (${WORKDIR}/${BP} up to scarthgap, ${UNPACKDIR}/${BP} from styhead on).
SRC_URI = "file://m4-proxy.default;subdir=${BP} \
           file://m4-flasher.default;subdir=${BP}"

# Extra arguments for `m4-proxy` and `m4-flasher daemon`, written into the files when set, e.g.
#   M4_PROXY_ARGS = "--call-timeout 5"
# in x8-manager-conf.bbappend (no double quotes in the value: it is written between them).
M4_PROXY_ARGS ??= ""
M4_FLASHER_ARGS ??= ""
M4_PROXY_ARGS[doc] = "Extra arguments for m4-proxy, written to /etc/default/m4-proxy when set."
M4_FLASHER_ARGS[doc] = "Extra arguments for m4-flasher daemon, written to /etc/default/m4-flasher when set."

# cve-check: match CVEs filed against this project only.
CVE_PRODUCT = "x8-manager"

# A bbappend may set the arguments per machine.
PACKAGE_ARCH = "${MACHINE_ARCH}"

do_configure[noexec] = "1"
do_compile[noexec] = "1"

do_install() {
    install -D -m 0644 ${S}/m4-proxy.default ${D}${sysconfdir}/default/m4-proxy
    install -D -m 0644 ${S}/m4-flasher.default ${D}${sysconfdir}/default/m4-flasher
    if [ -n "${M4_PROXY_ARGS}" ]; then
        printf 'M4_PROXY_ARGS="%s"\n' "${M4_PROXY_ARGS}" >> ${D}${sysconfdir}/default/m4-proxy
    fi
    if [ -n "${M4_FLASHER_ARGS}" ]; then
        printf 'M4_FLASHER_ARGS="%s"\n' "${M4_FLASHER_ARGS}" >> ${D}${sysconfdir}/default/m4-flasher
    fi
}

FILES:${PN} += "${sysconfdir}/default/m4-proxy \
                ${sysconfdir}/default/m4-flasher"
CONFFILES:${PN} = "${sysconfdir}/default/m4-proxy \
                   ${sysconfdir}/default/m4-flasher"
