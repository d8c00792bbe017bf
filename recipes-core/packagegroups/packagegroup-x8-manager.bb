SUMMARY = "meta-x8-manager services for the Portenta X8 image"
DESCRIPTION = "The M4 RPC proxy, the M4 sketch flasher and the x8-apps tooling. \
               Add it to an image with CORE_IMAGE_BASE_INSTALL += \"packagegroup-x8-manager\"; \
               with DISTRO_FEATURES \"x8-manager\" it replaces Arduino's m4-proxy and \
               monitor-m4-elf-file."
HOMEPAGE = "https://github.com/meta-x8-manager/meta-x8-manager"
BUGTRACKER = "https://github.com/meta-x8-manager/meta-x8-manager/issues"
SECTION = "base"

inherit packagegroup

# x8-manager-conf: the services' /etc/default files (an integrator's M4_PROXY_ARGS land there).
RDEPENDS:${PN} = "x8-manager-apps \
                  x8-manager-conf \
                  x8-manager-doctor \
                  x8-manager-flasher \
                  x8-manager-proxy"
