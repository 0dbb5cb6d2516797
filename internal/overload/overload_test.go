package overload

import (
	"context"
	"sync"
	"testing"

	"google.golang.org/grpc"
)

func TestLimiter(t *testing.T) {
	l := New(2)
	steps := []struct {
		op   string
		want bool
	}{
		{"acquire", true}, {"acquire", true}, {"acquire", false}, {"release", true}, {"acquire", true}, {"acquire", false},
	}
	for i, st := range steps {
		if st.op == "release" {
			l.Release()
			continue
		}
		if got := l.Acquire(); got != st.want {
			t.Errorf("step %d: Acquire = %v, want %v", i, got, st.want)
		}
	}
	if l.InFlight() != 2 || l.Shed() != 2 {
		t.Errorf("in flight %d, shed %d; want 2, 2", l.InFlight(), l.Shed())
	}
	if u := New(0); !u.Acquire() || !u.Acquire() {
		t.Error("no limit must always acquire")
	}
}

func TestInterceptorShedsOnlyOverTheLimit(t *testing.T) {
	l := New(3)
	release := make(chan struct{})
	started := make(chan struct{}, 10)
	handler := func(ctx context.Context, req any) (any, error) {
		started <- struct{}{}
		<-release
		return "handled", nil
	}
	ic := l.UnaryInterceptor(func(_ context.Context, method string, _ any) (any, bool) {
		return "shed", method == "/check"
	})
	var wg sync.WaitGroup
	results := make(chan any, 10)
	for range 3 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r, _ := ic(context.Background(), nil, &grpc.UnaryServerInfo{FullMethod: "/check"}, handler)
			results <- r
		}()
	}
	for range 3 {
		<-started
	}
	// Over the limit: a limited method is shed at once, a health check is not.
	if r, _ := ic(context.Background(), nil, &grpc.UnaryServerInfo{FullMethod: "/check"}, handler); r != "shed" {
		t.Errorf("over the limit: %v, want shed", r)
	}
	go func() {
		r, _ := ic(context.Background(), nil, &grpc.UnaryServerInfo{FullMethod: "/health"}, handler)
		results <- r
	}()
	<-started
	close(release)
	wg.Wait()
	for range 4 {
		if r := <-results; r != "handled" {
			t.Errorf("got %v, want handled", r)
		}
	}
}
