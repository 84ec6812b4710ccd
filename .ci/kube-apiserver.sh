#!/usr/bin/env bash
# Builds kube-apiserver from the Go module proxy once into a cache outside the
# repository, keyed by version, and prints the binary's path. A cached binary
# is reused. The Kubernetes source tests (discovery/kube) run against it.
#
#   KUBE_VERSION   Kubernetes release to build (default v1.36.3)
#   EWGATE_CACHE   cache directory (default /var/cache/ewgate)
set -euo pipefail

version="${KUBE_VERSION:-v1.36.3}"
cache="${EWGATE_CACHE:-/var/cache/ewgate}"
# The -b suffix is the build recipe's revision: bump it when the recipe
# changes what the binary is, so that an older build is not reused (b2:
# the binary reports $version instead of v0.0.0-master).
bin="$cache/kube-apiserver-$version-b2"
if [[ -x "$bin" ]]; then
	echo "$bin"
	exit 0
fi

mkdir -p "$cache"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
staging="v0${version#v1}" # v1.36.3 -> v0.36.3

cd "$work"
cat >go.mod <<MOD
module kubeapiserverbuild

go 1.26
MOD
cat >main.go <<'GO'
// Command kube-apiserver is the upstream Kubernetes API server, built from
// the module proxy for ewgate's integration tests.
package main

import (
	"os"

	"k8s.io/component-base/cli"
	"k8s.io/kubernetes/cmd/kube-apiserver/app"
)

func main() {
	os.Exit(cli.Run(app.NewAPIServerCommand()))
}
GO
go mod edit -require "k8s.io/kubernetes@$version"
# k8s.io/kubernetes lists its staging modules at v0.0.0; point each at the
# published release (kube-openapi and utils carry real pseudo-versions).
go mod download -json "k8s.io/kubernetes@$version" >kube.json
gomod="$(sed -n 's/.*"GoMod": "\(.*\)".*/\1/p' kube.json)"
for m in $(awk '/^[[:space:]]*k8s.io\/[a-z0-9-]+ v0.0.0$/ {print $1}' "$gomod"); do
	go mod edit -replace "$m=$m@$staging"
done
go mod tidy >&2
# Stamp the version as Kubernetes' own build does (hack/lib/version.sh);
# without it the binary reports v0.0.0-master.
minor="${version#v*.}"
minor="${minor%%.*}"
major="${version#v}"
major="${major%%.*}"
ldflags="-X k8s.io/component-base/version.gitVersion=$version -X k8s.io/component-base/version.gitMajor=$major -X k8s.io/component-base/version.gitMinor=$minor"
CGO_ENABLED=0 go build -trimpath -ldflags "$ldflags" -o "$bin.tmp" . >&2
mv "$bin.tmp" "$bin"
echo "$bin"
