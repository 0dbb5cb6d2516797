package redistest

import (
	"context"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
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
	if err := s.ping(); err == nil {
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
	if err := s.ping(); err == nil {
		t.Fatal("PING answered while paused")
	}
	s.Resume()
	if err := s.ping(); err != nil {
		t.Fatalf("PING after Resume: %v", err)
	}
	s.Pause() // Kill at cleanup must also end a paused server
}

// TestStartTLS checks the TLS servers answer a client configured from
// ClientTLS, and refuse the clients they should.
func TestStartTLS(t *testing.T) {
	cases := []struct {
		name       string
		mutual     bool
		client     func(s *Server) *redis.Options
		wantServed bool
	}{
		{"tls, trusted client", false, func(s *Server) *redis.Options {
			return &redis.Options{Addr: s.Addr(), TLSConfig: s.ClientTLS()}
		}, true},
		{"tls, plain client", false, func(s *Server) *redis.Options {
			return &redis.Options{Addr: s.Addr()}
		}, false},
		{"mutual tls, client certificate", true, func(s *Server) *redis.Options {
			return &redis.Options{Addr: s.Addr(), TLSConfig: s.ClientTLS()}
		}, true},
		{"mutual tls, no client certificate", true, func(s *Server) *redis.Options {
			c := s.ClientTLS()
			c.Certificates = nil
			return &redis.Options{Addr: s.Addr(), TLSConfig: c}
		}, false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			s := StartTLS(t, c.mutual)
			opts := c.client(s)
			opts.DialTimeout, opts.ReadTimeout, opts.MaxRetries, opts.DisableIdentity = time.Second, time.Second, -1, true
			client := redis.NewClient(opts)
			defer client.Close()
			err := client.Ping(context.Background()).Err()
			if got := err == nil; got != c.wantServed {
				t.Errorf("served = %v (err %v), want %v", got, err, c.wantServed)
			}
			// The helper's own client always works.
			if err := s.Client().Ping(context.Background()).Err(); err != nil {
				t.Errorf("Client(): %v", err)
			}
			s.Restart()
			if err := s.Client().Ping(context.Background()).Err(); err != nil {
				t.Errorf("Client() after Restart: %v", err)
			}
		})
	}
}

// TestStartCluster checks the cluster serves keys from every slot through
// a cluster client, spread over its nodes.
func TestStartCluster(t *testing.T) {
	c := StartCluster(t, 3)
	cc := c.Client()
	ctx := context.Background()
	for i := range 60 {
		if err := cc.Set(ctx, "k"+string(rune('a'+i%26))+string(rune('a'+i/26)), i, 0).Err(); err != nil {
			t.Fatalf("SET through the cluster client: %v", err)
		}
	}
	holding := 0
	for _, n := range c.Nodes {
		keys, err := n.Client().DBSize(ctx).Result()
		if err != nil {
			t.Fatal(err)
		}
		if keys > 0 {
			holding++
		}
	}
	if got, want := holding, 3; got != want {
		t.Errorf("%d nodes hold keys, want %d", got, want)
	}
}
