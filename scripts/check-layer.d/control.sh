#!/usr/bin/env bash
# A control run for a kas configuration whose parse failed in scripts/check-layer: parse one recipe
# (`bitbake -e -b`) in that configuration's build directory with meta-x8-manager, then again with
# the layer taken out of bblayers.conf and the opt-in out of local.conf. The same error both times
# means the failure is not this layer's. Run as the build user, after check-layer CONFIG:
#   scripts/check-layer.d/control.sh CONFIG RECIPE          (RECIPE relative to CONFIG's layers/)
#   e.g. control.sh qemuarm64-secureboot-wrynose meta-lmp/meta-lmp-base/recipes-kernel/linux/linux-lmp_6.6.bb
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
work="$root/out/check-layer/$1"
recipe="$work/layers/$2"
cd "$work"
export LANG=en_US.UTF-8 LC_ALL=en_US.UTF-8
set +u
# shellcheck disable=SC1091
. layers/openembedded-core/oe-init-build-env build > /dev/null
set -u
errors() { bitbake -e -b "$recipe" 2>&1 | grep -aoE '^(ERROR|WARNING): .*|ParseError at .*' | grep -v 'Command execution failed' || true; }
echo "with meta-x8-manager ($(grep -c . conf/bblayers.conf) lines of bblayers.conf):"
errors | sed 's/^/  /'
cp conf/bblayers.conf conf/bblayers.conf.with-x8-manager
cp conf/local.conf conf/local.conf.with-x8-manager
trap 'mv conf/bblayers.conf.with-x8-manager conf/bblayers.conf; mv conf/local.conf.with-x8-manager conf/local.conf' EXIT
grep -vF "$root " conf/bblayers.conf.with-x8-manager | grep -vF '${TOPDIR}/../../../.. ' > conf/bblayers.conf
sed -i '/x8-manager/d' conf/local.conf
echo "without meta-x8-manager (layers: $(bitbake-layers show-layers 2>/dev/null | awk '!/^(NOTE|layer |=)/ {print $1}' | tr '\n' ' ')):"
errors | sed 's/^/  /'
