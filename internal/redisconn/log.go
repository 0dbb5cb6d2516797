package redisconn

import (
	"context"
	"fmt"
	"log/slog"

	"github.com/redis/go-redis/v9"
)

// SetLogger sends go-redis's own messages (dial failures, logged from
// inside a call while Redis is down) to log at debug level, instead of as
// bare "redis: … pool.go" lines on stderr. go-redis has one logger for the
// whole process: call this once, before dialing, with the server's logger.
func SetLogger(log *slog.Logger) {
	redis.SetLogger(slogPrinter{log})
}

// slogPrinter is go-redis's Logging interface over slog.
type slogPrinter struct{ log *slog.Logger }

func (p slogPrinter) Printf(ctx context.Context, format string, v ...any) {
	if !p.log.Enabled(ctx, slog.LevelDebug) {
		return
	}
	p.log.DebugContext(ctx, "redis client", "message", fmt.Sprintf(format, v...))
}
