// Package watch notices when a file changes by polling its metadata. Polling
// (not inotify) survives the atomic symlink swap Kubernetes uses to update a
// mounted ConfigMap, editors that write a new file and rename it, and network
// file systems; at one stat per interval it costs nothing measurable.
package watch

import (
	"context"
	"os"
	"time"
)

// stamp is what must change for a file to count as changed.
type stamp struct {
	mod  time.Time
	size int64
	ok   bool
}

func statOf(path string) stamp {
	fi, err := os.Stat(path)
	if err != nil {
		return stamp{}
	}
	return stamp{mod: fi.ModTime(), size: fi.Size(), ok: true}
}

// File calls changed each time path's modification time or size differs from
// what it was at the previous poll, until ctx ends. A file that disappears is
// not reported; its reappearance is. changed runs on the polling goroutine.
func File(ctx context.Context, path string, every time.Duration, changed func()) {
	last := statOf(path)
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		cur := statOf(path)
		if cur.ok && cur != last {
			changed()
		}
		if cur.ok {
			last = cur
		}
	}
}
