#!/bin/sh
# release.sh builds dyad's release files (make release): for each platform a
# static, reproducible binary dist/dyad-<version>-<os>-<arch> and its CycloneDX
# 1.5 SBOM <binary>.cdx.json (made by deploy/release/sbom from the binary's own
# build information), and SHA256SUMS over all of them.
#
#   deploy/release/release.sh
#   DIST=/tmp/out PLATFORMS=linux/amd64 VERSION=v1.2.3 deploy/release/release.sh
#
# Same commit and same Go toolchain give the same bytes on any machine, in any
# folder, with any build cache: no cgo, no paths (-trimpath), no VCS stamp
# (-buildvcs=false: the version comes from git describe instead), no build ID,
# no symbol tables, and GOAMD64, GOARM64, GOEXPERIMENT, GOFIPS140 and GOFLAGS
# fixed whatever the builder's environment says. GOFIPS140=certified builds
# against the FIPS 140-3 certified snapshot of the Go Cryptographic Module
# that the toolchain ships ($GOROOT/lib/fips140/certified.txt; v1.0.0 in Go
# 1.26); cmd/dyad's //go:debug fips140=off keeps the mode off until the
# daemon runs with GODEBUG=fips140=on, so one binary serves both modes. The toolchain is whatever
# `go` is (the SBOM names it): rebuild with the same one to compare.
# deploy/release_test.go builds twice with separate caches and compares;
# deploy/container/Dockerfile uses the same flags. SOURCE_DATE_EPOCH (default:
# the last commit's time) dates the SBOMs and the files, so an archive of dist/
# repeats too. To verify a release: check out its tag (clean), run this with
# the Go version its SBOM names, and compare SHA256SUMS.
set -eu

root=$(cd "$(dirname "$0")/../.." && pwd)
GO=${GO:-go}
DIST=${DIST:-$root/dist}
PLATFORMS=${PLATFORMS:-linux/amd64 linux/arm64}
VERSION=${VERSION:-$(git -C "$root" describe --tags --always --dirty)}
SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git -C "$root" log -1 --format=%ct)}
export SOURCE_DATE_EPOCH

case $VERSION in
*-dirty) echo "release.sh: warning: uncommitted changes; $VERSION is not a release anyone can rebuild" >&2 ;;
esac

mkdir -p "$DIST"
DIST=$(cd "$DIST" && pwd)
# Only this run's files may end up in SHA256SUMS.
rm -f "$DIST"/dyad-*-*-* "$DIST/SHA256SUMS"

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cd "$root"

# The SBOM tool runs here, so it is built for this machine; -trimpath and no
# cgo let it share the standard library's build cache with the binaries.
CGO_ENABLED=0 GOFLAGS=-mod=readonly "$GO" build -trimpath -o "$tmp/sbom" ./deploy/release/sbom

for p in $PLATFORMS; do
	os=${p%/*} arch=${p#*/}
	bin=dyad-$VERSION-$os-$arch
	echo "release.sh: building $bin" >&2
	CGO_ENABLED=0 GOOS=$os GOARCH=$arch GOAMD64=v1 GOARM64=v8.0 GOEXPERIMENT= GOFIPS140=certified GOFLAGS=-mod=readonly \
		"$GO" build -trimpath -buildvcs=false \
		-ldflags "-s -w -buildid= -X github.com/dyad-tunnel/dyad/daemon.Version=$VERSION" \
		-o "$DIST/$bin" ./cmd/dyad
	"$tmp/sbom" -version "$VERSION" -o "$DIST/$bin.cdx.json" "$DIST/$bin"
done

cd "$DIST"
if command -v sha256sum >/dev/null; then sum="sha256sum"; else sum="shasum -a 256"; fi
# shellcheck disable=SC2086 # $sum is a command and its flags
LC_ALL=C $sum dyad-"$VERSION"-* >SHA256SUMS
touch -d "@$SOURCE_DATE_EPOCH" dyad-"$VERSION"-* SHA256SUMS 2>/dev/null || true
echo "release.sh: $DIST" >&2
cat SHA256SUMS
