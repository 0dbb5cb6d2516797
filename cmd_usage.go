package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strings"
	"time"
)

// cmdUsage prints a subject's usage as a running server reports it
// (GET /v1/usage/{subject} on the admin listener).
func cmdUsage(ctx context.Context, args []string, std stdio) error {
	fs := newFlags("usage", std.out)
	admin := fs.String("admin", "127.0.0.1:9090", "the server's admin address (server.admin_address)")
	tokenEnv := fs.String("token-env", "TOLLGATE_ADMIN_TOKEN", "environment variable holding the admin token (admin.token_env)")
	timeout := fs.Duration("timeout", 5*time.Second, "bound on the request")
	// The subject may come before or after the flags.
	var subject string
	if len(args) > 0 && !strings.HasPrefix(args[0], "-") {
		subject, args = args[0], args[1:]
	}
	if err := fs.Parse(args); err != nil {
		return parseFlags(fs, args) // the same error, or the help
	}
	if subject == "" && fs.NArg() == 1 {
		subject = fs.Arg(0)
	} else if fs.NArg() > 0 {
		return fmt.Errorf("%w: usage: unexpected argument %q", errUsage, fs.Arg(0))
	}
	if subject == "" {
		return fmt.Errorf("%w: usage: give a SUBJECT", errUsage)
	}
	token := strings.TrimSpace(os.Getenv(*tokenEnv))
	if token == "" {
		return fmt.Errorf("%w: usage: $%s is empty: the admin token is needed", errUsage, *tokenEnv)
	}
	ctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()
	u := "http://" + *admin + "/v1/usage/" + url.PathEscape(subject)
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return fmt.Errorf("%w: usage: --admin %q: %v", errUsage, *admin, err)
	}
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("usage: %v", err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("usage: %s: %s", resp.Status, strings.TrimSpace(string(body)))
	}
	_, err = std.out.Write(body)
	return err
}
