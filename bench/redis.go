package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tollgate-authz/tollgate/entitlement"
	"github.com/tollgate-authz/tollgate/entitlement/redissource"
	"github.com/tollgate-authz/tollgate/internal/proc"
)

// redisPrefix is the redis source's default key prefix, which the
// generated config leaves as it is.
const redisPrefix = "tollgate:ent:"

// redisServer is a redis-server the harness started for -scale-sources redis.
type redisServer struct {
	*proc.Child
	addr string
}

// startRedis runs redis-server on a free loopback port, without
// persistence, on the harness's CPUs (it serves only the cache's misses).
func startRedis(dir string) (*redisServer, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	args := []string{"--bind", "127.0.0.1", "--port", strconv.Itoa(port), "--save", "", "--appendonly", "no", "--dir", dir}
	bin := "redis-server"
	if pinning.client != "" {
		args = append([]string{"-c", pinning.client, bin}, args...)
		bin = "taskset"
	}
	p, err := proc.Start("redis", filepath.Join(dir, "redis.log"), exec.Command(bin, args...))
	if err != nil {
		return nil, fmt.Errorf("redis-server: %w", err)
	}
	track(p)
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	c := redis.NewClient(&redis.Options{Addr: addr})
	defer c.Close()
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if c.Ping(context.Background()).Err() == nil {
			return &redisServer{Child: p, addr: addr}, nil
		}
		if time.Now().After(deadline) || p.Exited() {
			p.Stop()
			return nil, fmt.Errorf("redis-server did not answer at %s: %s", addr, p.Tail())
		}
	}
}

// redisBatch is how many subjects one pipeline writes.
const redisBatch = 5000

// loadRedis writes the n subjects writeFixtureOpts writes to a file, in the
// redis source's layout (entitlement/redissource: record, key index, the
// subject's key set, and the dataset marker), pipelined in batches.
func loadRedis(ctx context.Context, addr string, n int) error {
	c := redis.NewClient(&redis.Options{Addr: addr, ReadTimeout: time.Minute, WriteTimeout: time.Minute})
	defer c.Close()
	for lo := 0; lo < n; lo += redisBatch {
		p := c.Pipeline()
		for i := lo; i < min(n, lo+redisBatch); i++ {
			status := entitlement.StatusActive
			if i%pastDueEvery == pastDueEvery-1 {
				status = entitlement.StatusPastDue
			}
			e := entitlement.Entitlement{Subject: fmt.Sprintf("sub-%d", i), Plan: planOf(i), Status: status}
			body, err := json.Marshal(entitlement.ToJSON(&e))
			if err != nil {
				return err
			}
			d := digest(apiKey(i))
			p.Set(ctx, redisPrefix+"subject:"+e.Subject, body, 0)
			p.Set(ctx, redisPrefix+"key:"+d, e.Subject, 0)
			p.SAdd(ctx, redisPrefix+"subject-keys:"+e.Subject, d)
		}
		if _, err := p.Exec(ctx); err != nil {
			return fmt.Errorf("loading Redis: %w", err)
		}
	}
	// With the marker set, an unknown key is a confirmed "not found".
	return c.Set(ctx, redisPrefix+redissource.MarkerSuffix, time.Now().UTC().Format(time.RFC3339), 0).Err()
}

// redisUsedMemory is Redis's used_memory in bytes, 0 when unknown.
func redisUsedMemory(ctx context.Context, addr string) int64 {
	c := redis.NewClient(&redis.Options{Addr: addr})
	defer c.Close()
	info, err := c.Info(ctx, "memory").Result()
	if err != nil {
		return 0
	}
	for _, l := range strings.Split(info, "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(l), "used_memory:"); ok {
			b, _ := strconv.ParseInt(v, 10, 64)
			return b
		}
	}
	return 0
}

// fileSourceLines are the lines of tollgateConfig that name the file
// source; writeRedisFixture puts the redis source in their place.
const fileSourceLines = "  source: file\n  file: {path: entitlements.yaml, poll_interval: %s}\n"

// writeRedisFixture writes tollgateConfig with the redis source at addr
// and a cache of maxEntries.
func writeRedisFixture(dir, addr string, maxEntries int) (string, error) {
	if !strings.Contains(tollgateConfig, fileSourceLines) {
		return "", fmt.Errorf("bench: tollgateConfig no longer has the file source lines this replaces")
	}
	conf := strings.Replace(tollgateConfig, fileSourceLines, "  source: redis\n  redis: {address: %s}\n", 1)
	path := filepath.Join(dir, "tollgate.yaml")
	return path, os.WriteFile(path, fmt.Appendf(nil, conf, addr, maxEntries, false), 0o600)
}
