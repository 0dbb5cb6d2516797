// Package redisconn makes the one kind of Redis client tollgate uses, for the
// redis entitlement source, the redis quota store and the CLI alike: a
// single server or a Redis Cluster, with an ACL user, a password read from
// the environment, TLS (a client certificate reloaded when its files
// change), and timeouts that fail fast so a dead Redis costs a request about
// Timeout and no more.
//
// Dial is lazy: it builds the client from options its caller has checked
// (config does, with config.CheckHostPort for the address), reads the
// password and the TLS files, and an unreachable server is not an error
// until a command is sent. SetLogger
// routes go-redis's own log lines (dial failures inside a call) into slog.
// A Conn is safe for concurrent use, as go-redis's clients are.
package redisconn
