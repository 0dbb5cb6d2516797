package main

import (
	"bufio"
	"encoding/json"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// TestRedisClientLinesAreStructured: go-redis logs its dial failures from
// inside a call, a Check's among them. serve routes them into its own
// asynchronous JSON log, so with Redis down stderr holds only JSON lines
// (and a stalled stderr cannot block the Check that dialed). The redis
// source is used with the in-memory quota store, where nothing else would
// have set go-redis's logger.
func TestRedisClientLinesAreStructured(t *testing.T) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	down := lis.Addr().String()
	lis.Close() // nothing listens here: every dial fails
	dir := demoDir(t, "127.0.0.1:0")
	cfg := filepath.Join(dir, "tollgate.yaml")
	editFile(t, cfg, "  source: file\n", "  source: redis\n  redis: {address: "+down+", timeout: 150ms}\n")

	cmd, pr, _, _ := startBinary(t, "serve", "--config", cfg)
	var mu sync.Mutex
	var lines []string
	eof := make(chan struct{})
	go func() {
		defer close(eof)
		sc := bufio.NewScanner(pr)
		for sc.Scan() {
			mu.Lock()
			lines = append(lines, sc.Text())
			mu.Unlock()
		}
	}()
	var grpcAddr string
	waitFor(t, func() bool {
		mu.Lock()
		defer mu.Unlock()
		for _, l := range lines {
			var line struct{ Msg, GRPC string }
			if json.Unmarshal([]byte(l), &line) == nil && line.Msg == "serving" {
				grpcAddr = line.GRPC
				return true
			}
		}
		return false
	})
	conn := dialGRPC(t, grpcAddr)
	for _, key := range []string{"demo-free-key", "demo-pro-key", "another-key"} {
		if got, err := checkKey(conn, key); got != "entitlements_unavailable" || err != nil {
			t.Errorf("%s with redis down: %q, %v; want entitlements_unavailable", key, got, err)
		}
	}
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case <-eof:
	case <-time.After(time.Minute): // a guard against hanging, not a measure
		t.Fatal("stderr did not end after SIGTERM")
	}
	mu.Lock()
	defer mu.Unlock()
	for _, l := range lines {
		if !json.Valid([]byte(l)) || !strings.HasPrefix(l, "{") {
			t.Errorf("a line on stderr is not the JSON log: %q", l)
		}
	}
}
