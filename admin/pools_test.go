package admin

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"
)

// uploadHandler signals started when it runs, then answers with the length
// of the body it read, or 400 and the read error on errs.
func uploadHandler(started chan<- string, errs chan<- error) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if started != nil {
			started <- r.URL.Path
		}
		b, err := io.ReadAll(r.Body)
		if errs != nil {
			errs <- err
		}
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		fmt.Fprintf(w, "got %d bytes", len(b))
	})
}

// hold sends the headers of a 10-byte POST to path from client, and half
// its body, and reports whether the server took it (its handler ran) or
// answered at once (with which status).
func hold(t *testing.T, addr, path, client string, started <-chan string) (held bool, status int) {
	t.Helper()
	c := dial(t, addr)
	fmt.Fprintf(c, "POST %s HTTP/1.1\r\nHost: admin\r\nX-Test-Client: %s\r\nContent-Length: 10\r\n\r\n01234", path, client)
	answer := make(chan int, 1)
	go func() {
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			answer <- 0 // closed when the test ends
			return
		}
		resp.Body.Close()
		answer <- resp.StatusCode
	}()
	select {
	case <-started:
		return true, 0
	case code := <-answer:
		return false, code
	}
}

// post sends a whole 10-byte POST to path from client.
func post(t *testing.T, addr, path, client string) (int, string) {
	t.Helper()
	req, _ := http.NewRequest("POST", "http://"+addr+path, strings.NewReader("0123456789"))
	req.Header.Set("X-Test-Client", client)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// byTestHeader keys clients by a header, as every test client is 127.0.0.1.
func byTestHeader(r *http.Request) string { return r.Header.Get("X-Test-Client") }

// TestOneClientCannotTakeThePool: a client opening more slow bodies than its
// share gets 503 for the rest, and another client's body still gets in.
func TestOneClientCannotTakeThePool(t *testing.T) {
	s := New(nil, Limits{MaxBodies: 4, MaxBodiesPerClient: 2, BodyTimeout: time.Hour, ReadHeaderTimeout: time.Hour, MinBodyRate: -1})
	s.clientKey = byTestHeader
	started := make(chan string, 10)
	s.Handle("POST /webhook", uploadHandler(started, nil))
	addr := serve(t, s)

	var got []string
	for range 4 { // as many as the whole pool
		held, code := hold(t, addr, "/webhook", "attacker", started)
		got = append(got, fmt.Sprint(held, code))
	}
	if want := []string{"true 0", "true 0", "false 503", "false 503"}; fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("one client's slow bodies (held, status) = %v, want %v", got, want)
	}
	if code, body := post(t, addr, "/webhook", "stripe"); code != 200 || body != "got 10 bytes" {
		t.Errorf("another client's body with one client at its share = %d %q, want 200", code, body)
	}
}

// TestEndpointsHaveTheirOwnPools: slow bodies filling one endpoint's pool do
// not refuse bodies on another endpoint.
func TestEndpointsHaveTheirOwnPools(t *testing.T) {
	s := New(nil, Limits{MaxBodies: 2, MaxBodiesPerClient: 2, BodyTimeout: time.Hour, ReadHeaderTimeout: time.Hour, MinBodyRate: -1})
	s.clientKey = byTestHeader
	started := make(chan string, 10)
	s.Handle("POST /v1/invalidate", uploadHandler(started, nil))
	s.Handle("POST /webhook", uploadHandler(nil, nil))
	addr := serve(t, s)

	for range 2 {
		if held, code := hold(t, addr, "/v1/invalidate", "billing", started); !held {
			t.Fatalf("slow invalidate within the pool answered %d, want it held", code)
		}
	}
	if code, _ := post(t, addr, "/v1/invalidate", "billing"); code != 503 {
		t.Errorf("invalidate with its pool full = %d, want 503", code)
	}
	if code, body := post(t, addr, "/webhook", "billing"); code != 200 || body != "got 10 bytes" {
		t.Errorf("webhook with the invalidate pool full = %d %q, want 200", code, body)
	}
}

// TestBodyBelowMinRateIsCut: a body trickling slower than MinBodyRate loses
// its connection long before BodyTimeout, with ErrSlowBody, and frees its
// slot; a body that stalls after its headers likewise.
func TestBodyBelowMinRateIsCut(t *testing.T) {
	for _, trickle := range []bool{true, false} {
		t.Run(fmt.Sprintf("trickle=%v", trickle), func(t *testing.T) {
			s := New(nil, Limits{MaxBodies: 1, BodyTimeout: time.Hour, ReadHeaderTimeout: time.Hour, MinBodyRate: 1000})
			errs := make(chan error, 10)
			s.Handle("POST /upload", uploadHandler(nil, errs))
			addr := serve(t, s)
			c := dial(t, addr)
			fmt.Fprintf(c, "POST /upload HTTP/1.1\r\nHost: admin\r\nContent-Length: 1000000\r\n\r\na")
			if trickle {
				go func() { // 100 bytes/s, until the server hangs up
					for {
						time.Sleep(10 * time.Millisecond)
						if _, err := c.Write([]byte("a")); err != nil {
							return
						}
					}
				}()
			}
			if err := closedByServer(c); err != nil {
				t.Fatal(err)
			}
			if err := <-errs; !errors.Is(err, ErrSlowBody) {
				t.Errorf("handler's read error = %v, want ErrSlowBody", err)
			}
			if code, body := post(t, addr, "/upload", ""); code != 200 || body != "got 10 bytes" {
				t.Errorf("upload after the slow one was cut = %d %q, want 200", code, body)
			}
		})
	}
}

// TestBodyAtMinRateIsRead: a body arriving steadily faster than MinBodyRate
// is read whole, though it takes longer than the grace period.
func TestBodyAtMinRateIsRead(t *testing.T) {
	s := New(nil, Limits{BodyTimeout: time.Hour, ReadHeaderTimeout: time.Hour, MinBodyRate: 10})
	s.Handle("POST /upload", uploadHandler(nil, nil))
	addr := serve(t, s)
	c := dial(t, addr)
	const n = 150 // at 100 bytes/s: 1.5 s, 15 times the rate
	fmt.Fprintf(c, "POST /upload HTTP/1.1\r\nHost: admin\r\nContent-Length: %d\r\n\r\n", n)
	for range n {
		time.Sleep(10 * time.Millisecond)
		if _, err := c.Write([]byte("a")); err != nil {
			t.Fatal(err)
		}
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if got, want := fmt.Sprint(resp.StatusCode, " ", string(b)), fmt.Sprint(200, " got ", n, " bytes"); got != want {
		t.Errorf("steady body = %q, want %q", got, want)
	}
}
