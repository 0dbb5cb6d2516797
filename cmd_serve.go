package main

import (
	"context"
	"io"
	"log/slog"
	"time"

	"github.com/tollgate-authz/tollgate/config"
	"github.com/tollgate-authz/tollgate/internal/app"
	"github.com/tollgate-authz/tollgate/internal/asynclog"
	"github.com/tollgate-authz/tollgate/internal/redisconn"
)

func cmdServe(ctx context.Context, args []string, std stdio) error {
	fs := newFlags("serve", std.out)
	cfgPath := fs.String("config", "", "the config file (see examples/tollgate.yaml)")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if err := requireConfig(fs, *cfgPath); err != nil {
		return err
	}
	cfg, err := config.Load(*cfgPath)
	if err != nil {
		return err
	}
	// A Check never waits for its log line: lines go through a bounded
	// queue, dropped and counted when stderr is slow, full or closed. The
	// queue is flushed at exit, for at most logFlushTimeout.
	logw := asynclog.New(std.errOut, asynclog.DefaultMaxBytes)
	defer func() {
		ctx, cancel := context.WithTimeout(context.Background(), logFlushTimeout)
		defer cancel()
		_ = logw.Close(ctx)
	}()
	log := newLogger(logw, cfg.Log.Level)
	if servedGC.From != "" {
		log.Info("garbage collector", "gogc", servedGC.GOGC, "memory_limit_bytes", servedGC.MemoryLimit, "from", servedGC.From)
		defer startServedGC()() // the headroom loop, for as long as serve runs
	}
	// go-redis and gRPC log from inside calls (a Check's, too): through
	// the queue, never straight to stderr.
	redisconn.SetLogger(log)
	app.SetGRPCLogger(log)
	a, err := app.New(cfg, app.Options{Version: version, Logger: log, LogWriter: logw, LogDropped: logw.Dropped})
	if err != nil {
		return err
	}
	defer a.Close()
	return a.Serve(ctx)
}

// logFlushTimeout bounds how long the exit waits for queued log lines to
// reach a slow stderr.
const logFlushTimeout = 2 * time.Second

// newLogger is the JSON logger at level; w should not block (serve gives it
// an asynclog.Writer).
func newLogger(w io.Writer, level string) *slog.Logger {
	var l slog.Level
	_ = l.UnmarshalText([]byte(level))
	return slog.New(slog.NewJSONHandler(w, &slog.HandlerOptions{Level: l}))
}
