package deploy

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"strings"
	"testing"

	"golang.org/x/mod/modfile"
)

// goVersion is the Go release the root module builds with: its toolchain
// line (the Makefile exports it as GOTOOLCHAIN), else its go line.
func goVersion(gomod []byte) (string, error) {
	mf, err := modfile.Parse("go.mod", gomod, nil)
	if err != nil {
		return "", err
	}
	if mf.Toolchain != nil {
		return strings.TrimPrefix(mf.Toolchain.Name, "go"), nil
	}
	if mf.Go != nil {
		return mf.Go.Version, nil
	}
	return "", fmt.Errorf("go.mod names no Go version")
}

// golangTags returns the tag of every `FROM golang:TAG` in a Dockerfile.
func golangTags(dockerfile []byte) []string {
	var tags []string
	sc := bufio.NewScanner(bytes.NewReader(dockerfile))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 2 || !strings.EqualFold(f[0], "FROM") {
			continue
		}
		img := f[1]
		for _, a := range f[1:] {
			if !strings.HasPrefix(a, "--") { // skip --platform=...
				img = a
				break
			}
		}
		if rest, ok := strings.CutPrefix(img, "golang:"); ok {
			tag, _, _ := strings.Cut(rest, "@") // a digest may follow
			tags = append(tags, tag)
		} else if img == "golang" || strings.HasPrefix(img, "golang@") {
			tags = append(tags, "")
		}
	}
	return tags
}

// dockerGoDrift says what is wrong with a Dockerfile's golang images for
// go.mod, or "" when every one is exactly go.mod's release.
func dockerGoDrift(gomod, dockerfile []byte) string {
	want, err := goVersion(gomod)
	if err != nil {
		return err.Error()
	}
	tags := golangTags(dockerfile)
	if len(tags) == 0 {
		return "no FROM golang:TAG stage"
	}
	for _, tag := range tags {
		// golang:1.26.11 or golang:1.26.11-bookworm, never golang:1.26.
		if v, _, _ := strings.Cut(tag, "-"); v != want {
			return fmt.Sprintf("FROM golang:%s, but go.mod builds with Go %s: use golang:%s", tag, want, want)
		}
	}
	return ""
}

// TestDockerfileGoVersion: the image builds with exactly the Go release
// go.mod names, so the two cannot drift apart.
func TestDockerfileGoVersion(t *testing.T) {
	gomod, err := os.ReadFile("../go.mod")
	if err != nil {
		t.Fatal(err)
	}
	dockerfile, err := os.ReadFile("../Dockerfile")
	if err != nil {
		t.Fatal(err)
	}
	if msg := dockerGoDrift(gomod, dockerfile); msg != "" {
		t.Errorf("Dockerfile: %s", msg)
	}

	// The check can fail.
	const mod = "module m\n\ngo 1.26.8\n\ntoolchain go1.26.11\n"
	cases := []struct {
		name, gomod, dockerfile string
		drift                   bool
	}{
		{"exact toolchain", mod, "FROM golang:1.26.11 AS build\nFROM scratch\n", false},
		{"exact, with a variant and digest", mod, "FROM --platform=$BUILDPLATFORM golang:1.26.11-bookworm@sha256:00 AS build\n", false},
		{"floating minor", mod, "FROM golang:1.26 AS build\n", true},
		{"the go line, not the toolchain", mod, "FROM golang:1.26.8 AS build\n", true},
		{"latest", mod, "FROM golang AS build\n", true},
		{"no toolchain line: the go line", "module m\n\ngo 1.26.8\n", "FROM golang:1.26.8\n", false},
		{"no golang stage", mod, "FROM alpine\n", true},
		{"one of two stages drifts", mod, "FROM golang:1.26.11 AS a\nFROM golang:1.25.3 AS b\n", true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if got := dockerGoDrift([]byte(c.gomod), []byte(c.dockerfile)) != ""; got != c.drift {
				t.Errorf("drift %v, want %v (%q)", got, c.drift, dockerGoDrift([]byte(c.gomod), []byte(c.dockerfile)))
			}
		})
	}
}

// TestLicenseAndChangelog: the repository ships the Apache-2.0 text and a
// Keep a Changelog file with an Unreleased section.
func TestLicenseAndChangelog(t *testing.T) {
	license, err := os.ReadFile("../LICENSE")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"Apache License", "Version 2.0, January 2004", "TERMS AND CONDITIONS FOR USE, REPRODUCTION, AND DISTRIBUTION", "END OF TERMS AND CONDITIONS"} {
		if !bytes.Contains(license, []byte(want)) {
			t.Errorf("LICENSE: no %q", want)
		}
	}
	changelog, err := os.ReadFile("../CHANGELOG.md")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"keepachangelog.com", "## [Unreleased]"} {
		if !bytes.Contains(changelog, []byte(want)) {
			t.Errorf("CHANGELOG.md: no %q", want)
		}
	}
}
