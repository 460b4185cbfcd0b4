#!/usr/bin/env bash
# Build rproxyd_<version>_<arch>.deb from the working tree.
#
# The Debian source tree must be called debian/, so the build copies what the
# package needs into build/deb/rproxyd-<version>/ with packaging/debian as
# debian/, builds the binary package there with dpkg-buildpackage, and runs
# lintian on the result.  The .deb lands in build/deb/ ($DEB_OUT).
#
# Environment:
#   DEB_OUT              output directory (default build/deb)
#   DEB_VERSION_SUFFIX   appended to the changelog version, for a rebuilt
#                        package that sorts higher (e.g. +e2e1); the build
#                        adds a changelog entry for it in the copy only
#   DEB_LINTIAN          0 skips lintian (default 1)
#   RPROXYD_PIP_INDEX    Python package index (default https://pypi.org/simple)
set -euo pipefail

top=$(cd "$(dirname "$0")/.." && pwd)
out=$(mkdir -p "${DEB_OUT:-$top/build/deb}" && cd "${DEB_OUT:-$top/build/deb}" && pwd)
suffix=${DEB_VERSION_SUFFIX:-}
changelog=$top/packaging/debian/changelog

version=$(dpkg-parsechangelog -l "$changelog" -S Version)
app_version=$(sed -n 's/^__version__ = "\(.*\)"$/\1/p' "$top/appliance/__init__.py")
if [[ ${version%%[-+~]*} != "$app_version" ]]; then
    echo "build-deb: packaging/debian/changelog says $version but appliance/__init__.py says" \
         "$app_version; add a changelog entry" >&2
    exit 1
fi
version+=$suffix
src=$out/rproxyd-$version

rm -rf "$src"
mkdir -p "$src/etc/rproxy/conf.d"
cp -R "$top/appliance" "$src/appliance"
cp "$top/requirements.txt" "$top/setup.py" "$top/pyproject.toml" "$top/README.md" "$src/"
mkdir -p "$src/docs"
# Every operator document; debian/rproxyd.docs picks what the package installs.
cp "$top"/docs/*.md "$src/docs/"
cp "$top/etc/rproxy/conf.d/README" "$src/etc/rproxy/conf.d/"
mkdir -p "$src/etc/rproxy/phases"
cp -R "$top/etc/rproxy/phases/examples" "$src/etc/rproxy/phases/"
cp -R "$top/packaging/debian" "$src/debian"
find "$src" -name __pycache__ -prune -exec rm -rf {} +
# debian/rules compiles its own: the C ticket and OCSP stapling callbacks and the compiled
# request path (the working tree's were built for its venv's Python, with other flags). The C
# files deleted are Cython's output; the two callbacks' sources are hand-written and stay.
find "$src/appliance" \( -name '*.so' -o -name '*.c' ! -name ticketkeys.c ! -name ocspstaple.c \) -delete
rm -f "$src/appliance/_build_info.json"

if [[ -n $suffix ]]; then
    maint=$(sed -n 's/^Maintainer: //p' "$src/debian/control")
    {
        printf 'rproxyd (%s) bookworm; urgency=medium\n\n' "$version"
        printf '  * Rebuild of %s with version suffix %s.\n\n' "${version%"$suffix"}" "$suffix"
        printf ' -- %s  %s\n\n' "$maint" "$(date -R)"
        cat "$changelog"
    } >"$src/debian/changelog"
fi

arch=$(dpkg --print-architecture)
deb=$out/rproxyd_${version}_${arch}.deb
rm -f "$deb"
start=$(date +%s)
(cd "$src" && dpkg-buildpackage -b -us -uc --build=binary)
echo "build-deb: built $deb in $(($(date +%s) - start)) s ($(du -h "$deb" | cut -f1))"

if [[ ${DEB_LINTIAN:-1} != 0 ]]; then
    # Every tag down to pedantic is shown; warnings and errors fail the build.
    lintian --display-info --pedantic --fail-on error,warning "$deb"
    echo "build-deb: lintian clean"
fi
