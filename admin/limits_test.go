package admin

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// clientPatience is how long a test waits for the server to act. It only
// bounds a failing test: a passing one is done as soon as the server acts.
const clientPatience = 30 * time.Second

// serve runs s on a loopback listener with its own http.Server, as serve
// does, and returns the address.
func serve(t *testing.T, s *Server) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	hs := s.HTTPServer(log.New(io.Discard, "", 0))
	go hs.Serve(lis)
	t.Cleanup(func() { hs.Close() })
	return lis.Addr().String()
}

func dial(t *testing.T, addr string) net.Conn {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(clientPatience))
	return c
}

// closedByServer reads c until the server closes it, and reports whether it
// did before the client's patience ran out.
func closedByServer(c net.Conn) error {
	_, err := io.Copy(io.Discard, c)
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return fmt.Errorf("connection still open after %s", clientPatience)
	}
	return nil // EOF or reset: closed
}

// TestSlowBodyIsCut: a client trickling a large body loses its connection
// once BodyTimeout has passed since its headers, even when the header and
// request timeouts are far away.
func TestSlowBodyIsCut(t *testing.T) {
	s := New(nil, Limits{ReadHeaderTimeout: time.Hour, BodyTimeout: 50 * time.Millisecond})
	readErr := make(chan error, 1)
	s.Handle("POST /upload", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, err := io.ReadAll(r.Body)
		readErr <- err
	}))
	c := dial(t, serve(t, s))
	fmt.Fprintf(c, "POST /upload HTTP/1.1\r\nHost: admin\r\nContent-Length: 1000000\r\n\r\na")
	go func() { // one byte at a time, until the server hangs up
		for {
			time.Sleep(10 * time.Millisecond)
			if _, err := c.Write([]byte("a")); err != nil {
				return
			}
		}
	}()
	if err := closedByServer(c); err != nil {
		t.Fatal(err)
	}
	if err := <-readErr; err == nil {
		t.Error("the handler read the whole body; want a read error")
	}
}

// TestSlowHeadersAreCut: the same for a client that never finishes its
// headers.
func TestSlowHeadersAreCut(t *testing.T) {
	s := New(nil, Limits{ReadHeaderTimeout: 50 * time.Millisecond, BodyTimeout: time.Hour, IdleTimeout: time.Hour})
	c := dial(t, serve(t, s))
	fmt.Fprintf(c, "GET /healthz HTTP/1.1\r\nHost: admin\r\n")
	if err := closedByServer(c); err != nil {
		t.Fatal(err)
	}
}

// TestIdleConnectionIsClosed: a keep-alive connection with no next request
// is closed after IdleTimeout.
func TestIdleConnectionIsClosed(t *testing.T) {
	s := New(nil, Limits{ReadHeaderTimeout: time.Hour, BodyTimeout: time.Hour, IdleTimeout: 50 * time.Millisecond})
	c := dial(t, serve(t, s))
	fmt.Fprintf(c, "GET /healthz HTTP/1.1\r\nHost: admin\r\n\r\n")
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if got, want := resp.StatusCode, 200; got != want {
		t.Fatalf("GET /healthz = %d, want %d", got, want)
	}
	if _, err := io.Copy(io.Discard, br); err != nil {
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			t.Fatalf("idle connection still open after %s", clientPatience)
		}
	}
}

// TestBodiesOverTheBoundAreRefusedAtOnce: with MaxBodies request bodies
// being read, the next request with a body is answered 503 without waiting;
// requests without a body are served; a slot freed is taken again.
func TestBodiesOverTheBoundAreRefusedAtOnce(t *testing.T) {
	s := New(nil, Limits{MaxBodies: 2, BodyTimeout: time.Hour, ReadHeaderTimeout: time.Hour, MinBodyRate: -1})
	started := make(chan struct{}, 10)
	s.Handle("POST /upload", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		started <- struct{}{}
		b, err := io.ReadAll(r.Body)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		fmt.Fprintf(w, "got %d bytes", len(b))
	}))
	addr := serve(t, s)
	post := func() (int, string) {
		resp, err := http.Post("http://"+addr+"/upload", "text/plain", strings.NewReader("0123456789"))
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, resp.Header.Get("Retry-After") + " " + string(b)
	}

	// Two slow uploads take both slots.
	var slow []net.Conn
	for range 2 {
		c := dial(t, addr)
		fmt.Fprintf(c, "POST /upload HTTP/1.1\r\nHost: admin\r\nContent-Length: 10\r\n\r\n01234")
		<-started
		slow = append(slow, c)
	}
	if code, body := post(); code != 503 || !strings.HasPrefix(body, "1 ") {
		t.Errorf("third upload = %d %q, want 503 with Retry-After: 1", code, body)
	}
	resp, err := http.Get("http://" + addr + "/healthz")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Errorf("GET /healthz with the body slots full = %d, want 200", resp.StatusCode)
	}

	// The first slow upload finishes: its slot is free again.
	fmt.Fprintf(slow[0], "56789")
	r1, err := http.ReadResponse(bufio.NewReader(slow[0]), nil)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(r1.Body)
	if r1.StatusCode != 200 || string(b) != "got 10 bytes" {
		t.Errorf("first slow upload = %d %q, want 200 got 10 bytes", r1.StatusCode, b)
	}
	if code, body := post(); code != 200 || !strings.Contains(body, "got 10 bytes") {
		t.Errorf("upload after a slot freed = %d %q, want 200", code, body)
	}
}

func TestBodyOverMaxBytes(t *testing.T) {
	s := New(nil, Limits{MaxBodyBytes: 10})
	var ran atomic.Int64
	s.Handle("POST /upload", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ran.Add(1)
		_, err := io.ReadAll(r.Body)
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			http.Error(w, "too large", http.StatusRequestEntityTooLarge)
			return
		}
		fmt.Fprint(w, "ok")
	}))
	addr := serve(t, s)
	tests := []struct {
		name    string
		body    io.Reader
		wantRes int
		wantRan int64 // the handler runs only when the length is not known to be over
	}{
		{"at the cap", strings.NewReader("0123456789"), 200, 1},
		{"declared over the cap", strings.NewReader("0123456789a"), 413, 0},
		{"chunked over the cap", io.MultiReader(strings.NewReader("0123456789a")), 413, 1}, // no length known
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ran.Store(0)
			resp, err := http.Post("http://"+addr+"/upload", "text/plain", tt.body)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if got := resp.StatusCode; got != tt.wantRes {
				t.Errorf("got %d, want %d", got, tt.wantRes)
			}
			if got := ran.Load(); got != tt.wantRan {
				t.Errorf("handler ran %d times, want %d", got, tt.wantRan)
			}
		})
	}
}
