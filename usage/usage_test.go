package usage

import "testing"

func TestNewID(t *testing.T) {
	tests := []struct {
		name       string
		a, b       [2]string
		wantSameID bool
	}{
		{"same request and reservation", [2]string{"req-1", "res-1"}, [2]string{"req-1", "res-1"}, true},
		{"another reservation", [2]string{"req-1", "res-1"}, [2]string{"req-1", "res-2"}, false},
		{"another request", [2]string{"req-1", "res-1"}, [2]string{"req-2", "res-1"}, false},
		{"the separator is not ambiguous", [2]string{"ab", "c"}, [2]string{"a", "bc"}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			x, y := NewID(tt.a[0], tt.a[1]), NewID(tt.b[0], tt.b[1])
			if got := x == y; got != tt.wantSameID {
				t.Errorf("NewID(%q) = %s, NewID(%q) = %s: same %v, want %v", tt.a, x, tt.b, y, got, tt.wantSameID)
			}
			if len(x) != 32 {
				t.Errorf("len(NewID) = %d, want 32", len(x))
			}
		})
	}
}
