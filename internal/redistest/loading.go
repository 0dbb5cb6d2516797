package redistest

import (
	"context"
	"net"
	"strconv"
	"strings"
	"time"
)

// LoadFrom makes s a replica of master and returns while s is still loading
// master's data, as a Redis that restarted with a large AOF or RDB file does:
// until finish is called, s accepts connections, SUBSCRIBE, INFO, CLIENT and
// CONFIG, and answers reads with a LOADING error within a few milliseconds.
// The load is slowed to 0.1 ms per key of master, so give master 100,000
// keys (see Fill) for up to 10 s of loading; LoadFrom fails the test if s is
// done loading before it sees it loading. finish
// lets the load end at full speed and waits for it; s then holds master's
// data and stays a (read-only) replica. Both servers must speak plain TCP.
func (s *Server) LoadFrom(master *Server) (finish func()) {
	s.t.Helper()
	ctx := context.Background()
	if err := master.Client().ConfigSet(ctx, "repl-diskless-sync-delay", "0").Err(); err != nil {
		s.t.Fatalf("redistest: %v", err)
	}
	c := s.Client()
	for _, kv := range [][2]string{
		{"repl-diskless-load", "disabled"},                // load from a file, serving LOADING meanwhile
		{"loading-process-events-interval-bytes", "1024"}, // answer clients while loading
		{"key-load-delay", "1000"},                        // microseconds per key
	} {
		if err := c.ConfigSet(ctx, kv[0], kv[1]).Err(); err != nil {
			s.t.Fatalf("redistest: CONFIG SET %s: %v", kv[0], err)
		}
	}
	host, port, _ := net.SplitHostPort(master.Addr())
	if err := c.Do(ctx, "REPLICAOF", host, port).Err(); err != nil {
		s.t.Fatalf("redistest: REPLICAOF: %v", err)
	}
	// While the replica waits for the master's file it is not loading yet;
	// once loaded, it is linked.
	s.waitInfo(func(info string) bool {
		if strings.Contains(info, "master_link_status:up") {
			s.t.Fatalf("redistest: %s loaded its master's data before it was seen loading: give the master more keys", s.Addr())
		}
		return strings.Contains(info, "loading:1")
	})
	return func() {
		s.t.Helper()
		if err := c.ConfigSet(ctx, "key-load-delay", "0").Err(); err != nil {
			s.t.Fatalf("redistest: %v", err)
		}
		s.waitInfo(func(info string) bool {
			return strings.Contains(info, "loading:0") && strings.Contains(info, "master_link_status:up")
		})
	}
}

// Fill adds n small keys named redistest:fill:<i>.
func (s *Server) Fill(n int) {
	s.t.Helper()
	c := s.Client()
	for i := 0; i < n; i += 1000 {
		p := c.Pipeline()
		for j := i; j < min(i+1000, n); j++ {
			p.Set(context.Background(), "redistest:fill:"+strconv.Itoa(j), "x", 0)
		}
		if _, err := p.Exec(context.Background()); err != nil {
			s.t.Fatalf("redistest: fill: %v", err)
		}
	}
}

// waitInfo polls INFO (persistence and replication) until done says so.
func (s *Server) waitInfo(done func(info string) bool) {
	s.t.Helper()
	c := s.Client()
	deadline := time.Now().Add(startTimeout)
	for {
		p, err1 := c.Info(context.Background(), "persistence").Result()
		r, err2 := c.Info(context.Background(), "replication").Result()
		if err1 == nil && err2 == nil && done(p+r) {
			return
		}
		if time.Now().After(deadline) {
			s.t.Fatalf("redistest: %s: INFO not as expected within %v: %v %v\n%s%s", s.Addr(), startTimeout, err1, err2, p, r)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
