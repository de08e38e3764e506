#!/bin/sh
# Builds dist/lacre-milter_VERSION_amd64.deb with nfpm (Go tooling; the
# Go module proxy provides it). Run from anywhere; needs Go.
set -eu
cd "$(dirname "$0")/../.."
# A release tag (v1.2.3) gives 1.2.3; an untagged commit 0.0.0~gitHASH,
# which sorts before any release.
if [ -z "${LACRE_VERSION:-}" ]; then
	if tag=$(git describe --tags --exact-match 2>/dev/null); then
		VERSION="${tag#v}"
	else
		VERSION="0.0.0~git$(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
	fi
else
	VERSION="$LACRE_VERSION"
fi
mkdir -p dist
CGO_ENABLED=0 go build -trimpath -ldflags "-s -w -X main.version=$VERSION" -o dist/lacre-milter ./cmd/lacre-milter
gzip -9n -c contrib/man/lacre-milter.8 > contrib/man/lacre-milter.8.gz
NFPM="${NFPM:-$(go env GOPATH)/bin/nfpm}"
[ -x "$NFPM" ] || go install github.com/goreleaser/nfpm/v2/cmd/nfpm@v2.48.0
LACRE_VERSION="$VERSION" "$NFPM" package --config contrib/deb/nfpm.yaml --packager deb --target dist/
rm -f contrib/man/lacre-milter.8.gz
ls dist/*.deb
