package policy

import (
	"bytes"
	"io"
	"regexp"
)

func bytesReader(b []byte) io.Reader { return bytes.NewReader(b) }

var linePrefix = regexp.MustCompile(`^line \d+: `)

func stripLine(s string) string { return linePrefix.ReplaceAllString(s, "") }
