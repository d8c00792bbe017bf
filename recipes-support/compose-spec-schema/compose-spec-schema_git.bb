# nooelint: oelint.var.bbclassextend - a data file for target images; hosts get it from PyPI
SUMMARY = "JSON schema of the Compose specification, for x8-apps lint on the device"
DESCRIPTION = "compose-spec.json from the Compose specification project, installed where \
               x8-apps (x8-manager-apps) looks for it, so that x8-apps lint checks compose \
               files on the device the way it does on a developer host."
HOMEPAGE = "https://github.com/compose-spec/compose-spec"
BUGTRACKER = "https://github.com/compose-spec/compose-spec/issues"
SECTION = "devel"
LICENSE = "Apache-2.0"
LIC_FILES_CHKSUM = "file://LICENSE;md5=d322371c902a1cdfd4fd48ce200735d1"

PV = "0+git"

# destsuffix=${BP} puts the checkout in the default S on every release (${WORKDIR}/${BP} up to
# scarthgap, ${UNPACKDIR}/${BP} later), so the recipe needs neither S nor UNPACKDIR.
SRC_URI = "git://github.com/compose-spec/compose-spec.git;protocol=https;branch=main;destsuffix=${BP}"
# The commit that last changed schema/compose-spec.json (2025-10-28); bump it deliberately.
SRCREV = "a08f8d51631b7127ddac3d2c65537db429d0f1d0"

inherit allarch

# cve-check: match CVEs filed against this project only.
CVE_PRODUCT = "compose-spec"

do_configure[noexec] = "1"
do_compile[noexec] = "1"

# The path x8manager.apps.schema.SYSTEM_SCHEMA names.
do_install() {
    install -D -m 0644 ${S}/schema/compose-spec.json ${D}${datadir}/x8manager/compose-spec.json
}

FILES:${PN} += "${datadir}/x8manager/compose-spec.json"
