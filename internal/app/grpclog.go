package app

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"sync/atomic"

	"google.golang.org/grpc/grpclog"
)

// grpcTarget is where gRPC's own messages go once RouteGRPCLog installed
// the bridge; nil drops them.
var grpcTarget atomic.Pointer[slog.Logger]

// RouteGRPCLog sends gRPC's own log (transport errors, warnings) to the
// logger given to SetGRPCLogger, as JSON lines with the rest of the log,
// instead of as bare "ERROR: [transport] …" lines on stderr. gRPC has one
// logger per process and replacing it is not safe once gRPC runs: call it
// first thing in main, never from tests.
func RouteGRPCLog() { grpclog.SetLoggerV2(grpcBridge{}) }

// SetGRPCLogger sets where RouteGRPCLog's bridge writes: gRPC's errors and
// warnings at their level, its info messages at debug.
func SetGRPCLogger(log *slog.Logger) { grpcTarget.Store(log) }

// grpcBridge is grpclog.LoggerV2 over the logger in grpcTarget.
type grpcBridge struct{}

func (grpcBridge) emit(level slog.Level, msg string) {
	if l := grpcTarget.Load(); l != nil {
		l.Log(context.Background(), level, "grpc", "message", strings.TrimRight(msg, "\n"))
	}
}

func (b grpcBridge) Info(args ...any)   { b.emit(slog.LevelDebug, fmt.Sprint(args...)) }
func (b grpcBridge) Infoln(args ...any) { b.emit(slog.LevelDebug, fmt.Sprintln(args...)) }
func (b grpcBridge) Infof(format string, args ...any) {
	b.emit(slog.LevelDebug, fmt.Sprintf(format, args...))
}
func (b grpcBridge) Warning(args ...any)   { b.emit(slog.LevelWarn, fmt.Sprint(args...)) }
func (b grpcBridge) Warningln(args ...any) { b.emit(slog.LevelWarn, fmt.Sprintln(args...)) }
func (b grpcBridge) Warningf(format string, args ...any) {
	b.emit(slog.LevelWarn, fmt.Sprintf(format, args...))
}
func (b grpcBridge) Error(args ...any)   { b.emit(slog.LevelError, fmt.Sprint(args...)) }
func (b grpcBridge) Errorln(args ...any) { b.emit(slog.LevelError, fmt.Sprintln(args...)) }
func (b grpcBridge) Errorf(format string, args ...any) {
	b.emit(slog.LevelError, fmt.Sprintf(format, args...))
}
func (b grpcBridge) Fatal(args ...any)   { b.emit(slog.LevelError, fmt.Sprint(args...)); os.Exit(1) }
func (b grpcBridge) Fatalln(args ...any) { b.emit(slog.LevelError, fmt.Sprintln(args...)); os.Exit(1) }
func (b grpcBridge) Fatalf(format string, args ...any) {
	b.emit(slog.LevelError, fmt.Sprintf(format, args...))
	os.Exit(1)
}

// V reports whether verbosity level l is on: gRPC's verbose messages
// (level 1 and up) are not wanted.
func (grpcBridge) V(l int) bool { return l <= 0 }
