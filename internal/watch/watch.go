// Package watch notices when a file changes by polling its metadata. Polling
// (not inotify) survives the atomic symlink swap Kubernetes uses to update a
// mounted ConfigMap, editors that write a new file and rename it, and network
// file systems; at one stat per interval it costs nothing measurable.
//
// A change is reported only once the file has settled: its metadata and its
// content are the same at two polls in a row. An editor that writes the file
// in place (truncate, then write, perhaps in several pieces) is thus never
// read half written, however its writes fall between polls; a reload comes
// one interval after the last write, at most two after it.
package watch

import (
	"context"
	"hash/maphash"
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

// seed hashes contents for one process: the hashes are only compared.
var seed = maphash.MakeSeed()

// sumOf hashes path's content; ok is false when it cannot be read.
func sumOf(path string) (sum uint64, ok bool) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, false
	}
	return maphash.Bytes(seed, b), true
}

// poller is one file's state from poll to poll. Its content is read only
// between a change and the poll that finds it settled.
type poller struct {
	path    string
	last    stamp  // at the previous poll (when the file was there)
	pending bool   // last differs from what was last reported
	sum     uint64 // the content at the previous poll, while pending
}

func newPoller(path string) *poller { return &poller{path: path, last: statOf(path)} }

// poll looks at the file once and reports whether it has changed and then
// stayed the same since the previous poll: the moment to reload it.
func (p *poller) poll() bool {
	cur := statOf(p.path)
	if !cur.ok { // gone (perhaps for a moment): wait for it to return
		return false
	}
	if cur != p.last {
		p.last, p.pending = cur, true
		p.sum, _ = sumOf(p.path)
		return false
	}
	if !p.pending {
		return false
	}
	sum, ok := sumOf(p.path)
	if !ok || sum != p.sum { // rewritten with the same size and time stamp
		p.sum = sum
		return false
	}
	p.pending = false
	return true
}

// File calls changed each time path has changed and then settled (see the
// package comment), until ctx ends. A file that disappears is not reported;
// its reappearance is. changed runs on the polling goroutine. A write that
// begins while changed reads the file changes its stamp, so it is reported
// again once it settles.
func File(ctx context.Context, path string, every time.Duration, changed func()) {
	t := time.NewTicker(every)
	defer t.Stop()
	watchFile(newPoller(path), func() bool {
		select {
		case <-ctx.Done():
			return false
		case <-t.C:
			return true
		}
	}, changed)
}

// watchFile polls p each time next returns true, until it returns false.
func watchFile(p *poller, next func() bool, changed func()) {
	for next() {
		if p.poll() {
			changed()
		}
	}
}
