package web

import (
	"bufio"
	"crypto/sha256"
	"encoding/hex"
	"regexp"
	"strings"
	"testing"
)

// TestVendored checks the embedded xterm.js files against SHA256SUMS, the
// record scripts/vendor-xterm.sh wrote after verifying the npm tarballs'
// integrity: a hand edit of a vendored file fails here.
func TestVendored(t *testing.T) {
	sums, ok := Lookup("vendor/SHA256SUMS")
	if !ok {
		t.Fatal("vendor/SHA256SUMS is not embedded")
	}
	n := 0
	sc := bufio.NewScanner(strings.NewReader(string(sums.Body)))
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "#") || line == "" {
			continue
		}
		want, name, ok := strings.Cut(line, "  ")
		if !ok {
			t.Fatalf("bad line %q", line)
		}
		a, ok := Lookup("vendor/" + name)
		if !ok {
			t.Errorf("%s is listed but not embedded", name)
			continue
		}
		got := sha256.Sum256(a.Body)
		if hex.EncodeToString(got[:]) != want {
			t.Errorf("%s: sha256 %x, SHA256SUMS says %s", name, got, want)
		}
		n++
	}
	if n != 5 {
		t.Errorf("%d vendored files checked, want 5 (xterm.mjs, xterm.css, addon-fit.mjs and two LICENSE files)", n)
	}
	for _, lic := range []string{"vendor/xterm/LICENSE", "vendor/addon-fit/LICENSE"} {
		if a, ok := Lookup(lic); !ok || !strings.Contains(string(a.Body), "MIT") && !strings.Contains(string(a.Body), "Permission is hereby granted") {
			t.Errorf("%s missing or not the MIT licence", lic)
		}
	}
}

// TestNoInlineScript: the pages load scripts by src only (the CSP allows
// 'self' and nothing inline), with no event-handler attributes.
func TestNoInlineScript(t *testing.T) {
	script := regexp.MustCompile(`(?i)<script\b([^>]*)>`)
	handler := regexp.MustCompile(`(?i)\son[a-z]+\s*=`)
	for _, page := range []string{"index.html", "login.html", "terminal.html"} {
		a, ok := Lookup(page)
		if !ok {
			t.Fatalf("%s not embedded", page)
		}
		if a.Type != "text/html; charset=utf-8" {
			t.Errorf("%s: type %q", page, a.Type)
		}
		for _, m := range script.FindAllStringSubmatch(string(a.Body), -1) {
			if !strings.Contains(m[1], `src="/ui/`) {
				t.Errorf("%s: inline or foreign script %q", page, m[0])
			}
		}
		if handler.MatchString(string(a.Body)) {
			t.Errorf("%s: an inline event handler", page)
		}
	}
	if a, _ := Lookup("static/app.js"); a.Type != "text/javascript; charset=utf-8" {
		t.Errorf("app.js type %q", a.Type)
	}
}
