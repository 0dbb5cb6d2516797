package main

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/signal"
	"runtime"
	"syscall"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	rpcstatus "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/keepalive"
)

// floor is the do-nothing ext_authz server: it decodes the CheckRequest, as
// any server must, and allows it. Its throughput and latency are the floor
// that tollgate is compared with.
type floor struct {
	authv3.UnimplementedAuthorizationServer
}

var okResponse = &authv3.CheckResponse{
	Status:       &rpcstatus.Status{},
	HttpResponse: &authv3.CheckResponse_OkResponse{OkResponse: &authv3.OkHttpResponse{}},
}

func (floor) Check(context.Context, *authv3.CheckRequest) (*authv3.CheckResponse, error) {
	return okResponse, nil
}

// ServerOptions are the grpc-go server settings; the floor takes the same
// ones `tollgate serve` uses, so the comparison is of the handlers.
type ServerOptions struct {
	MaxConcurrentStreams uint32
	// NumStreamWorkers, when > 0, serves streams from a fixed pool of
	// goroutines (grpc.NumStreamWorkers) instead of one new goroutine each;
	// -1 means 16 per GOMAXPROCS.
	NumStreamWorkers int
	// StaticWindow, when > 0, fixes the HTTP/2 stream and connection flow
	// control windows (grpc.StaticStreamWindowSize, StaticConnWindowSize),
	// which turns off grpc-go's BDP estimation and its pings.
	StaticWindow int32
}

func (o ServerOptions) grpc() []grpc.ServerOption {
	opts := []grpc.ServerOption{
		grpc.MaxConcurrentStreams(o.MaxConcurrentStreams),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 5 * time.Second, PermitWithoutStream: true}),
	}
	if n := o.NumStreamWorkers; n != 0 {
		if n < 0 {
			n = 16 * runtime.GOMAXPROCS(0)
		}
		opts = append(opts, grpc.NumStreamWorkers(uint32(n)))
	}
	if o.StaticWindow > 0 {
		opts = append(opts, grpc.StaticStreamWindowSize(o.StaticWindow), grpc.StaticConnWindowSize(o.StaticWindow))
	}
	return opts
}

// serveFloor runs the floor server in this process (the harness starts
// itself in this mode, pinned like tollgate) until SIGTERM. It prints the
// address it listens on.
func serveFloor(o ServerOptions) error {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	gs := grpc.NewServer(o.grpc()...)
	authv3.RegisterAuthorizationServer(gs, floor{})
	fmt.Printf("listening %s\n", lis.Addr())
	go func() {
		c := make(chan os.Signal, 1)
		signal.Notify(c, syscall.SIGTERM, syscall.SIGINT)
		<-c
		gs.Stop()
	}()
	return gs.Serve(lis)
}
