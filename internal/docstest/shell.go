package docstest

import (
	"strings"
	"unicode"
)

// Command is one command line of a shell block.
type Command struct {
	Line    int        // within the block: 1 is the line after the fence
	Stages  [][]string // the commands of a pipeline or a && list, as words
	Comment string     // what follows an unquoted #
}

// ShellLines splits a shell block into its commands: lines continued with
// a backslash are joined, quotes are removed as the shell would (no
// expansion), comments are set apart, redirections dropped, and pipelines
// and &&, ; lists split. In a console block only the lines that start with
// "$ " are commands, and the comment lines of a shell block that follow a
// command (# → 402 …) are its comment too.
func ShellLines(text string, console bool) []Command {
	var cmds []Command
	last := -1 // the block line the last command ended on
	lines := strings.Split(text, "\n")
	for i := 0; i < len(lines); i++ {
		l := lines[i]
		if console {
			rest, ok := strings.CutPrefix(l, "$ ")
			if !ok {
				continue
			}
			l = rest
		}
		trimmed := strings.TrimSpace(l)
		if trimmed == "" {
			continue
		}
		if strings.HasPrefix(trimmed, "#") {
			if n := len(cmds); n > 0 && last == i-1 { // the comment of the command just above
				cmds[n-1].Comment = strings.TrimSpace(cmds[n-1].Comment + " " + strings.TrimPrefix(trimmed, "#"))
				last = i
			}
			continue
		}
		start := i
		for strings.HasSuffix(l, "\\") && i+1 < len(lines) {
			i++
			l = strings.TrimSuffix(l, "\\") + " " + lines[i]
		}
		stages, comment := words(l)
		cmds = append(cmds, Command{Line: start + 1, Stages: stages, Comment: comment})
		last = i
	}
	return cmds
}

// words splits one command line into the words of each stage.
func words(l string) (stages [][]string, comment string) {
	var stage []string
	var w strings.Builder
	inWord, redirect := false, false
	end := func() {
		if inWord {
			if redirect {
				redirect = false
			} else if s := w.String(); s == "<" || s == ">" || s == ">>" || s == "2>" || s == "2>&1" {
				redirect = s != "2>&1"
			} else if strings.HasPrefix(s, "<") || strings.HasPrefix(s, ">") || strings.HasPrefix(s, "2>") {
				// <file, >file: dropped
			} else {
				stage = append(stage, s)
			}
		}
		w.Reset()
		inWord = false
	}
	endStage := func() {
		end()
		if len(stage) > 0 {
			stages = append(stages, stage)
		}
		stage = nil
	}
	for i := 0; i < len(l); i++ {
		c := l[i]
		switch {
		case c == '\'':
			j := strings.IndexByte(l[i+1:], '\'')
			if j < 0 {
				j = len(l) - i - 1
			}
			w.WriteString(l[i+1 : i+1+j])
			inWord = true
			i += j + 1
		case c == '"':
			j := i + 1
			for ; j < len(l) && l[j] != '"'; j++ {
				if l[j] == '\\' && j+1 < len(l) {
					j++
				}
				w.WriteByte(l[j])
			}
			inWord = true
			i = j
		case c == '\\' && i+1 < len(l):
			i++
			w.WriteByte(l[i])
			inWord = true
		case c == '#' && !inWord:
			endStage()
			return stages, strings.TrimSpace(l[i+1:])
		case c == '|' || c == ';' || c == '&':
			if c == '&' && inWord && strings.HasSuffix(w.String(), ">") { // 2>&1
				w.WriteByte(c)
				continue
			}
			endStage()
			if i+1 < len(l) && (l[i+1] == '|' || l[i+1] == '&') {
				i++
			}
		case unicode.IsSpace(rune(c)):
			end()
		default:
			w.WriteByte(c)
			inWord = true
		}
	}
	endStage()
	return stages, ""
}

// EnvoyText is an Envoy fragment as YAML: a line that is only "..." stands
// for what the fragment leaves as it was, and goes.
func EnvoyText(text string) string {
	var b strings.Builder
	for _, l := range strings.SplitAfter(text, "\n") {
		if strings.TrimSpace(l) != "..." {
			b.WriteString(l)
		}
	}
	return b.String()
}

// Anchors are the fragments GitHub gives a Markdown text's headings:
// lower case, spaces to hyphens, punctuation other than - and _ removed,
// and -1, -2 … after a repeat.
func Anchors(md string) []string {
	var out []string
	seen := map[string]int{}
	inBlock := false
	for _, l := range strings.Split(md, "\n") {
		if strings.HasPrefix(strings.TrimLeft(l, " "), "```") {
			inBlock = !inBlock
			continue
		}
		if inBlock || !strings.HasPrefix(l, "#") {
			continue
		}
		h := strings.TrimSpace(strings.TrimLeft(l, "#"))
		var b strings.Builder
		for _, r := range strings.ToLower(h) {
			switch {
			case unicode.IsLetter(r) || unicode.IsDigit(r) || r == '-' || r == '_':
				b.WriteRune(r)
			case r == ' ':
				b.WriteByte('-')
			}
		}
		a := b.String()
		if n := seen[a]; n > 0 {
			out = append(out, a+"-"+itoa(n))
		} else {
			out = append(out, a)
		}
		seen[a]++
	}
	return out
}

func itoa(n int) string {
	if n < 10 {
		return string(rune('0' + n))
	}
	return itoa(n/10) + string(rune('0'+n%10))
}
