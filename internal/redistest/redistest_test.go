package redistest

import (
	"context"
	"testing"
	"time"
)

func TestKillRestart(t *testing.T) {
	s := Start(t)
	c := s.Client()
	ctx := context.Background()
	if err := c.Set(ctx, "k", "v", 0).Err(); err != nil {
		t.Fatalf("set: %v", err)
	}
	addr := s.Addr()

	s.Kill()
	if err := ping(addr); err == nil {
		t.Fatal("PING answered after Kill")
	}
	s.Kill() // killing a stopped server is a no-op

	s.Restart()
	if got := s.Addr(); got != addr {
		t.Errorf("Addr after Restart = %s, want %s", got, addr)
	}
	// The old pooled connection is dead; a fresh client sees the empty server.
	c2 := s.Client()
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	n, err := c2.Exists(ctx, "k").Result()
	if err != nil {
		t.Fatalf("exists after restart: %v", err)
	}
	if n != 0 {
		t.Errorf("key survived a restart without persistence")
	}
}

func TestServersAreSeparate(t *testing.T) {
	a, b := Start(t), Start(t)
	if a.Addr() == b.Addr() {
		t.Fatalf("two servers on %s", a.Addr())
	}
	ctx := context.Background()
	if err := a.Client().Set(ctx, "k", "a", 0).Err(); err != nil {
		t.Fatal(err)
	}
	if n, err := b.Client().Exists(ctx, "k").Result(); err != nil || n != 0 {
		t.Errorf("b sees a's key: n=%d err=%v", n, err)
	}
}

func TestPauseResume(t *testing.T) {
	s := Start(t)
	s.Pause()
	if err := ping(s.Addr()); err == nil {
		t.Fatal("PING answered while paused")
	}
	s.Resume()
	if err := ping(s.Addr()); err != nil {
		t.Fatalf("PING after Resume: %v", err)
	}
	s.Pause() // Kill at cleanup must also end a paused server
}
