SUMMARY = "MessagePack-RPC bridge between Python apps and Arduino microcontrollers"
DESCRIPTION = "Arduino's client library for arduino-router (Bridge().call/notify/provide/unprovide). \
               On the Portenta X8 m4-proxy's router front serves it on /var/run/arduino-router.sock, \
               so apps written for the UNO Q run unchanged."
HOMEPAGE = "https://github.com/arduino/arduino-router-bridge-py"
BUGTRACKER = "https://github.com/arduino/arduino-router-bridge-py/issues"
SECTION = "devel/python"
LICENSE = "MPL-2.0"
LIC_FILES_CHKSUM = "file://LICENSE.txt;md5=f75d2927d3c1ed2414ef72048f5ad640"

# The sdist is named the PEP 625 way (underscores).
PYPI_PACKAGE = "arduino_router_bridge"
SRC_URI[sha256sum] = "c5b55db4db7956b220846ad6fec5787e28b36fbec8698b5378198aca2c5d14f4"
SRC_URI += "file://0001-pyproject.toml-build-with-scarthgap-s-setuptools-69.patch"

# pyproject.toml: build-backend = "setuptools.build_meta".
inherit pypi python_setuptools_build_meta

CVE_PRODUCT = "arduino-router-bridge"

# msgpack from meta-python; the rest is the standard library, by scarthgap's python3-manifest.json:
# socket (io), logging, queue (threading); collections, struct, threading, typing, urllib.parse
# and weakref are in python3-core.
RDEPENDS:${PN} = "python3-core \
                  python3-io \
                  python3-logging \
                  python3-msgpack \
                  python3-threading"

# Pure Python: also for host tools and SDKs that talk to a router.
BBCLASSEXTEND = "native nativesdk"
