#!/bin/sh
# Regenerates the Go code of ewgate's gRPC API (api/ewgate/v1/*.pb.go) from
# api/ewgate/v1/ewgate.proto, offline:
#
#   GOBIN=$HOME/go/bin go install github.com/bufbuild/buf/cmd/buf@v1.75.0  # once
#   api/generate.sh            # or: go generate ./api
#
# buf runs the protoc-gen-go and protoc-gen-go-grpc versions pinned as tools
# in go.mod (see buf.gen.yaml). Set BUF to use a buf binary not on PATH.
# Commit the generated files with the .proto change.
set -eu
cd "$(dirname "$0")"
buf=${BUF:-buf}
if ! command -v "$buf" >/dev/null 2>&1; then
	if [ -x "$(go env GOPATH)/bin/buf" ]; then
		buf="$(go env GOPATH)/bin/buf"
	else
		echo "generate.sh: buf not found; install it with" >&2
		echo "  go install github.com/bufbuild/buf/cmd/buf@v1.75.0" >&2
		exit 1
	fi
fi
"$buf" lint
"$buf" generate
