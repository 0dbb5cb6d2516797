package config

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"strconv"
	"strings"
)

// Addresses and URLs in the config may hold a secret by mistake (a Redis
// address written as redis://:PASSWORD@host, an http URL with user:pass@).
// They are checked here, and a value is only ever quoted in an error after
// Redact has taken its userinfo out: no error, and so no log line, prints a
// password written into an address.

// Redact is s made safe to quote in errors and logs: the userinfo of a URL
// or an address (everything from the scheme, or the start, up to the last
// '@') is replaced by "xxxxx"; then everything from the first '?', '#', or
// character that starts an option of a connection string (',', ';', '=',
// white space) is cut and shown as "…". The order matters: a password may
// itself hold any of those characters, so the userinfo goes first, up to
// the last '@'. What is left is a scheme, a host and a port or a path.
func Redact(s string) string {
	if at := strings.LastIndexByte(s, '@'); at >= 0 {
		start := 0
		if j := strings.Index(s, "://"); j >= 0 && j < at {
			start = j + len("://")
		}
		s = s[:start] + "xxxxx" + s[at:]
	}
	if i := strings.IndexAny(s, "?#,;= \t\r\n"); i >= 0 {
		s = s[:i] + "…"
	}
	return s
}

// CheckHostPort accepts host:port (a name, an IPv4 address, or an IPv6
// address in brackets, and a port number from 1 to 65535): the form of a
// Redis address. Its error quotes addr only redacted.
func CheckHostPort(addr string) error {
	if strings.Contains(addr, "://") || strings.Contains(addr, "@") {
		return fmt.Errorf("%q is not host:port: write the address alone; a password goes in an environment variable (password_env, --password-env)", Redact(addr))
	}
	host, port, err := net.SplitHostPort(addr)
	if err != nil || host == "" {
		return fmt.Errorf("%q is not host:port", Redact(addr))
	}
	if strings.ContainsAny(host, " /\\") {
		return fmt.Errorf("%q is not host:port: the host has a space or a slash", Redact(addr))
	}
	if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
		// Not the port itself: "user:password" has the shape of host:port.
		return fmt.Errorf("host %q: the port is not a number from 1 to 65535", Redact(host))
	}
	return nil
}

// checkListenAddress accepts host:port to listen on (the host may be empty,
// for every interface, and the port 0, for any free one), and
// unix:///path where unixOK.
func checkListenAddress(addr string, unixOK bool) error {
	if p, ok := strings.CutPrefix(addr, "unix://"); ok {
		if !unixOK {
			return fmt.Errorf("%q: a unix socket is not supported here", Redact(addr))
		}
		if p == "" {
			return fmt.Errorf("%q: the socket path is empty", addr)
		}
		return nil
	}
	if strings.Contains(addr, "://") || strings.Contains(addr, "@") {
		return fmt.Errorf("%q is not host:port or unix:///path", Redact(addr))
	}
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("%q is not host:port or unix:///path", Redact(addr))
	}
	if n, err := strconv.Atoi(port); err != nil || n < 0 || n > 65535 {
		return fmt.Errorf("host %q: the port is not a number from 0 to 65535", Redact(host))
	}
	return nil
}

// errHasUserinfo is the problem of a URL with credentials in it.
var errHasUserinfo = errors.New("has credentials in it (user:password@): take them out, and give a token in token_env")

// checkHTTPURL accepts an absolute http or https URL with a host, and no
// userinfo, query or fragment. Its error quotes raw only redacted, and never repeats
// url.Parse's error, which quotes the whole input.
func checkHTTPURL(raw string) error {
	u, err := url.Parse(raw)
	switch {
	case err != nil:
		return fmt.Errorf("%q is not a URL", Redact(raw))
	case u.User != nil || strings.Contains(u.Host, "@"):
		return fmt.Errorf("%q %w", Redact(raw), errHasUserinfo)
	case u.Scheme != "http" && u.Scheme != "https" || u.Host == "":
		// Scheme, host and path only: an opaque URL ("user:password")
		// keeps its secret in u.Opaque.
		return fmt.Errorf("%q is not an http(s) URL", Redact(u.Scheme+"://"+u.Host+u.Path))
	case u.RawQuery != "" || u.Fragment != "" || u.ForceQuery:
		// Paths are appended to it: a query would end up in the middle.
		return fmt.Errorf("%q must not have a query or fragment", Redact(u.Scheme+"://"+u.Host+u.Path)+"…")
	}
	return nil
}
