# Tells the user when meta-x8-manager is in bblayers.conf but the distro has not opted in,
# the way meta-rauc does: the layer then only offers its packages and leaves Arduino's
# m4-proxy and monitor-m4-elf-file units in place.
# Silence it with SKIP_META_X8_MANAGER_FEATURE_CHECK = "1" (e.g. when you only want the packages).

addhandler x8_manager_feature_check
x8_manager_feature_check[eventmask] = "bb.event.SanityCheck"
# nooelint: oelint.task.docstrings - an event handler, not a task
python x8_manager_feature_check() {
    skip_check = e.data.getVar('SKIP_META_X8_MANAGER_FEATURE_CHECK') == "1"
    if not skip_check and not bb.utils.contains('DISTRO_FEATURES', 'x8-manager', True, False, e.data):
        bb.warn("meta-x8-manager is included but 'x8-manager' is not in DISTRO_FEATURES: Arduino's "
                "m4-proxy and monitor-m4-elf-file services stay as they are. Add "
                "DISTRO_FEATURES:append = \" x8-manager\" to opt in, or set "
                "SKIP_META_X8_MANAGER_FEATURE_CHECK = \"1\" to silence this warning.")
}
