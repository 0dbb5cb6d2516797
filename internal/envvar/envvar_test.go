package envvar

import (
	"os"
	"testing"
)

func TestLookup(t *testing.T) {
	const name = "TOLLGATE_TEST_ENVVAR"
	tests := []struct {
		name    string
		value   *string // nil: unset
		want    string
		wantErr string
	}{
		{"set", ptr("s3cret"), "s3cret", ""},
		{"trailing newline", ptr(" s3cret\n"), "s3cret", ""},
		{"empty", ptr(""), "", "environment variable TOLLGATE_TEST_ENVVAR is unset or empty"},
		{"white space only", ptr(" \n"), "", "environment variable TOLLGATE_TEST_ENVVAR is unset or empty"},
		{"unset", nil, "", "environment variable TOLLGATE_TEST_ENVVAR is unset or empty"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Setenv(name, "")
			if tt.value != nil {
				t.Setenv(name, *tt.value)
			} else {
				os.Unsetenv(name)
			}
			got, err := Lookup(name)
			gotErr := ""
			if err != nil {
				gotErr = err.Error()
			}
			if got != tt.want || gotErr != tt.wantErr {
				t.Errorf("Lookup = %q, %q; want %q, %q", got, gotErr, tt.want, tt.wantErr)
			}
		})
	}
}

func ptr(s string) *string { return &s }
