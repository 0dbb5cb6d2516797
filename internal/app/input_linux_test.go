//go:build linux

package app

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
	"unsafe"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
)

// TestConfigWrittenInPlaceIsNeverLoadedHalfWritten: the config, then the
// entitlements file, are written in place (truncated, then written in two
// halves with a poll of the file in between, as a slow editor or a copy
// does). The first half of each is valid on its own (no routes; fewer
// subjects), yet no Check meanwhile is refused, and each file is reloaded
// once, whole. The test sees the poll through inotify: the watch opens the
// file (to hash it, or to load it) and nothing else does.
func TestConfigWrittenInPlaceIsNeverLoadedHalfWritten(t *testing.T) {
	dir := demoDir(t, "127.0.0.1:0")
	cfg := filepath.Join(dir, "tollgate.yaml")
	raw, err := os.ReadFile(cfg)
	if err != nil {
		t.Fatal(err)
	}
	// One poll a second: the rest of a file is written well within a poll
	// interval of the poll that saw the first half, however busy the machine.
	writeFile(t, cfg, strings.ReplaceAll(string(raw), "poll_interval: 20ms", "poll_interval: 1s"))
	s := startServe(t, cfg)
	opens := watchOpens(t, dir)
	client := authv3.NewAuthorizationClient(s.conn)

	// Checks run all along, for a customer in the first half of the
	// entitlements file and one in the second.
	var total, refused atomic.Int64
	var mu sync.Mutex
	var refusals []string
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for _, key := range []string{"demo-free-key", "demo-pro-key"} {
		wg.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
				resp, err := client.Check(ctx, &authv3.CheckRequest{Attributes: &authv3.AttributeContext{
					Request: &authv3.AttributeContext_Request{Http: &authv3.AttributeContext_HttpRequest{
						Method: "GET", Path: "/v1/search", Host: "api.example.com", Headers: map[string]string{"x-api-key": key},
					}},
				}})
				cancel()
				total.Add(1)
				if c := code(resp); err != nil || c != "ok" {
					refused.Add(1)
					mu.Lock()
					refusals = append(refusals, fmt.Sprintf("%s: %s %v", key, c, err))
					mu.Unlock()
				}
			}
		})
	}

	var counts []func() int // each file's reloads since its write began
	for i, f := range []struct {
		name, cut, reloaded string
	}{
		{"tollgate.yaml", "\nroutes:\n", `"msg":"config reloaded"`},
		{"entitlements.yaml", "\n  - id: acme\n", `"msg":"entitlements reloaded"`},
	} {
		path := filepath.Join(dir, f.name)
		whole, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		cut := bytes.Index(whole, []byte(f.cut))
		if cut < 0 {
			t.Fatalf("%s has no %q", f.name, f.cut)
		}
		first, rest := whole[:cut+1], whole[cut+1:]
		reloads := func() int { return strings.Count(s.logs.String(), f.reloaded) }
		before := reloads()
		w, err := os.OpenFile(path, os.O_WRONLY|os.O_TRUNC, 0)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := w.Write(first); err != nil {
			t.Fatal(err)
		}
		// A fence: an open of the file reported after it is a poll that
		// found the first half alone.
		fence := fmt.Sprintf(".fence-%d", i)
		writeFile(t, filepath.Join(dir, fence), "")
		opens.await(t, fence)
		opens.await(t, f.name)
		if _, err := w.Write(rest); err != nil {
			t.Fatal(err)
		}
		if err := w.Close(); err != nil {
			t.Fatal(err)
		}
		waitFor(t, func() bool { return reloads() > before })
		counts = append(counts, func() int { return reloads() - before })
	}
	close(stop)
	wg.Wait()
	// Many more polls (poll_interval is 20ms), for a later reload to show.
	// A slow machine may poll less and miss one: the count is a second
	// check; the decisive one is that no Check was refused below.
	time.Sleep(3 * time.Second)
	for i, n := range counts {
		if got := n(); got != 1 {
			t.Errorf("file %d: reloaded %d times, want once (whole)", i, got)
		}
	}
	if total.Load() == 0 || refused.Load() != 0 {
		t.Errorf("%d of %d Checks refused while the files were written: %v", refused.Load(), total.Load(), refusals[:min(len(refusals), 5)])
	}
}

// opens reports, by name, the files opened or created in a directory.
type opens struct{ names chan string }

// watchOpens watches dir with inotify until the test ends.
func watchOpens(t *testing.T, dir string) *opens {
	t.Helper()
	fd, err := syscall.InotifyInit1(syscall.IN_NONBLOCK | syscall.IN_CLOEXEC)
	if err != nil {
		t.Skipf("inotify: %v", err)
	}
	if _, err := syscall.InotifyAddWatch(fd, dir, syscall.IN_OPEN|syscall.IN_CREATE); err != nil {
		syscall.Close(fd)
		t.Fatal(err)
	}
	f := os.NewFile(uintptr(fd), "inotify") // non-blocking: Close ends a Read
	o := &opens{names: make(chan string, 1024)}
	done := make(chan struct{})
	t.Cleanup(func() { f.Close(); <-done })
	go func() {
		defer close(done)
		buf := make([]byte, 64<<10)
		for {
			n, err := f.Read(buf)
			if err != nil {
				return
			}
			for off := 0; off+syscall.SizeofInotifyEvent <= n; {
				ev := (*syscall.InotifyEvent)(unsafe.Pointer(&buf[off]))
				name := string(bytes.TrimRight(buf[off+syscall.SizeofInotifyEvent:off+syscall.SizeofInotifyEvent+int(ev.Len)], "\x00"))
				off += syscall.SizeofInotifyEvent + int(ev.Len)
				select {
				case o.names <- name:
				case <-time.After(time.Minute):
					return
				}
			}
		}
	}()
	return o
}

// await returns once name has been opened or created since the last
// await that returned.
func (o *opens) await(t *testing.T, name string) {
	t.Helper()
	timeout := time.After(time.Minute)
	for {
		select {
		case got := <-o.names:
			if got == name {
				return
			}
		case <-timeout:
			t.Fatalf("%s was not opened", name)
		}
	}
}
