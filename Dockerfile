# syntax=docker/dockerfile:1
#
# ewgate container image: one static binary on distroless/static, non-root.
#
#   docker build -t ewgate:dev .
#   docker run --rm ewgate:dev --help
#
# Ports (see docs/operations.md; the flags have no defaults for gossip and
# tunnel, these are the numbers deploy/ uses):
#   15443/tcp        AUTO_PASSTHROUGH listener (from the Istio Gateway server port)
#   15444/udp+tcp    tunnels: QUIC on UDP, TCP + TLS 1.3 fallback on the same port number
#   15445/udp+tcp    gossip (memberlist: UDP probes and gossip, TCP push/pull)
#   15446/tcp        admin HTTP (/healthz, /readyz, /metrics, /debug/...)

# Go version: go.mod says "go 1.26.0"; any 1.26.x toolchain builds it.
ARG GO_VERSION=1.26

FROM --platform=$BUILDPLATFORM golang:${GO_VERSION} AS build
WORKDIR /src
# Modules first, so that source edits do not re-download them.
COPY go.mod go.sum ./
RUN --mount=type=cache,target=/go/pkg/mod go mod download
COPY . .
ARG TARGETOS TARGETARCH
RUN --mount=type=cache,target=/go/pkg/mod \
    --mount=type=cache,target=/root/.cache/go-build \
    CGO_ENABLED=0 GOOS=${TARGETOS:-linux} GOARCH=${TARGETARCH} \
    go build -trimpath -ldflags "-s -w" -o /out/ewgate ./cmd/ewgate

# distroless/static: CA certificates, tzdata, /etc/passwd with user
# nonroot (65532); no shell, no package manager.
FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/ewgate /ewgate
USER 65532:65532
EXPOSE 15443/tcp 15444/udp 15444/tcp 15445/udp 15445/tcp 15446/tcp
ENTRYPOINT ["/ewgate"]
CMD ["--help"]
