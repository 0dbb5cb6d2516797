# tollgate: one static binary on distroless, running as non-root.
#
#   docker build -t tollgate:dev --build-arg VERSION=$(git describe --tags --always --dirty) .
#   docker run --rm tollgate:dev version
#
# The image carries the demo config from examples/ at /etc/tollgate. It binds
# 127.0.0.1 (gRPC 9191, admin 9090), which is right for a sidecar that only
# its pod's proxy talks to, but unreachable through `docker run -p`: mount your
# own config over /etc/tollgate for that (deploy/kubernetes/ shows one).

# Exactly the Go release go.mod names (its toolchain line, else its go line):
# the standard library's security fixes are part of the product, and the
# golang image sets GOTOOLCHAIN=local, so a floating tag would build with
# whatever release it holds. deploy/packaging_test.go keeps the two equal.
FROM golang:1.26.11 AS build
WORKDIR /src
# Dependencies first, so editing the code does not download them again.
COPY go.mod go.sum ./
RUN go mod download
COPY . .
ARG VERSION=dev
RUN CGO_ENABLED=0 go build -tags vtprotobuf -trimpath -ldflags "-s -w -X main.version=${VERSION}" -o /out/tollgate .

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/tollgate /tollgate
COPY examples/ /etc/tollgate/
# distroless's "nonroot" user, given by number so that Kubernetes'
# runAsNonRoot can verify it without a runAsUser of its own.
USER 65532:65532
# 9191: ext_authz gRPC. 9090: admin HTTP (/healthz, /readyz, /metrics).
EXPOSE 9191 9090
ENTRYPOINT ["/tollgate"]
CMD ["serve", "--config", "/etc/tollgate/tollgate.yaml"]
