# Debian package targets (included by the top Makefile).
#   make deb        build build/deb/rproxyd_<version>_<arch>.deb, then lintian
#   make deb-test   end-to-end test in a booted bookworm systemd-nspawn container
#                   (root; installs its tools, caches the bookworm root in
#                   $(E2E_ROOT_CACHE))
#   make deb-deps   install the build tools only
# Variables: DEB_VERSION_SUFFIX, RPROXYD_PIP_INDEX (see packaging/build-deb.sh),
#            E2E_ROOT_CACHE, E2E_KEEP (see packaging/e2e/run.sh).

DEB_BUILD_DEPS := debhelper devscripts lintian python3-pip python3-dev dpkg-dev fakeroot gcc libssl-dev libnghttp2-dev
E2E_ROOT_CACHE ?= /var/cache/rproxyd-e2e/bookworm-root

.PHONY: deb deb-deps deb-test

deb-deps:
	@missing=$$(for p in $(DEB_BUILD_DEPS); do \
	    dpkg-query -W -f '$${Status}' $$p 2>/dev/null | grep -q 'ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	    echo "deb-deps: installing" $$missing; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
	        apt-get install -y -qq --no-install-recommends $$missing; \
	fi

deb: deb-deps
	packaging/build-deb.sh

deb-test:
	E2E_ROOT_CACHE=$(E2E_ROOT_CACHE) packaging/e2e/run.sh
