package e2e

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// goplsTimeout bounds each gopls answer; the first hover waits for gopls to
// load the module (go list), which takes seconds on a cold cache.
const goplsTimeout = 90 * time.Second

// goplsPath finds gopls v0.23.0 as scripts/test-deps.sh installs it
// (bin/gopls of the repository), else on PATH.
func goplsPath(t *testing.T) string {
	t.Helper()
	if p, err := filepath.Abs("../../bin/gopls"); err == nil {
		if fi, err := os.Stat(p); err == nil && !fi.IsDir() {
			return p
		}
	}
	if p, err := exec.LookPath("gopls"); err == nil {
		return p
	}
	t.Fatalf("gopls not found in bin/ or on PATH: run ./scripts/test-deps.sh (or make test-deps), which installs gopls v0.23.0 into bin/gopls")
	return ""
}

// waitServing waits for the daemon's "agentbridge serving" announcement,
// which follows the agent's start. The socket accepts before that, and an
// initialize sent in between is refused with -32003 (a bridge bug that
// test/node/daemon-edges.test.mjs pins down); this test is about LSP, so it
// starts after the announcement.
func waitServing(t *testing.T, d *daemon) {
	t.Helper()
	deadline := time.After(15 * time.Second)
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for !strings.Contains(d.logs(), "agentbridge serving") {
		select {
		case <-d.exited:
			t.Fatalf("daemon exited before serving: %v\n%s", d.err, d.logs())
		case <-deadline:
			t.Fatalf("daemon did not log \"agentbridge serving\" within 15s\n%s", d.logs())
		case <-tick.C:
		}
	}
}

// The module gopls serves. The editor buffer (didOpen) differs from the file
// on disk only in Greeting's doc comment, so a hover showing the buffer's
// comment proves the gopls process that received didOpen is still the one
// answering.
const (
	lspGoMod   = "module example.com/hover\n\ngo 1.21\n"
	lspDiskSrc = `package main

import "fmt"

// Greeting is the version of this comment on disk.
func Greeting(name string) string { return "hello, " + name }

func main() { fmt.Println(Greeting("gopls")) }
`
	lspBufferDoc = "Greeting returns a friendly greeting from the editor buffer."
)

var lspBufferSrc = strings.Replace(lspDiskSrc, "Greeting is the version of this comment on disk.", lspBufferDoc, 1)

// lspPosition is the zero-based LSP position of the first occurrence of word
// on the line containing marker (ASCII source, so UTF-16 offsets are bytes).
func lspPosition(t *testing.T, src, marker, word string) map[string]any {
	t.Helper()
	for i, line := range strings.Split(src, "\n") {
		if strings.Contains(line, marker) {
			c := strings.Index(line, word)
			if c < 0 {
				t.Fatalf("%q not on the line of %q", word, marker)
			}
			return map[string]any{"line": i, "character": c}
		}
	}
	t.Fatalf("no line contains %q", marker)
	return nil
}

// lspAwait waits for the message match accepts, answering the requests gopls
// makes of its client (workspace/configuration, client/registerCapability,
// window/workDoneProgress/create) the way an editor does, so gopls never
// waits on this client.
func lspAwait(c *client, what string, match func(map[string]any) bool) map[string]any {
	c.t.Helper()
	m, _ := c.waitFor(goplsTimeout, what, func(m map[string]any) bool {
		method, isReq := m["method"].(string)
		if id, hasID := m["id"]; isReq && hasID {
			var result any
			if method == "workspace/configuration" {
				items, _ := field(m, "params", "items").([]any)
				cfg := make([]any, len(items))
				for i := range cfg {
					cfg[i] = map[string]any{}
				}
				result = cfg
			}
			c.send(map[string]any{"id": id, "result": result})
			c.t.Logf("answered gopls's %s (bridge id %v)", method, id)
			return false
		}
		return match(m)
	})
	return m
}

// lspCall sends a request with a string id (so it can never be confused with
// an agent request id the bridge assigned) and returns the response.
func lspCall(c *client, id, method string, params any) map[string]any {
	c.t.Helper()
	c.request(id, method, params)
	m := lspAwait(c, "response "+id, func(m map[string]any) bool {
		_, isReq := m["method"]
		return !isReq && m["id"] == id
	})
	if e, ok := m["error"]; ok {
		c.t.Fatalf("%s: error %v", method, e)
	}
	return m
}

func hoverText(t *testing.T, m map[string]any) string {
	t.Helper()
	switch v := field(m, "result", "contents").(type) {
	case map[string]any: // MarkupContent
		s, _ := v["value"].(string)
		return s
	case string:
		return v
	}
	t.Fatalf("hover result without contents: %v", m)
	return ""
}

// TestGoplsBehindLSPFraming runs gopls (a real LSP server nobody here wrote)
// behind serve --framing lsp: clients speak NDJSON on the socket, the bridge
// speaks Content-Length frames to gopls. The first client's initialize
// reaches gopls; the second client gets the cached result; one client's
// shutdown and exit are answered by the bridge without stopping the shared
// gopls, which still answers the other client.
func TestGoplsBehindLSPFraming(t *testing.T) {
	t.Parallel()
	gopls := goplsPath(t)
	if out, err := exec.Command(gopls, "version").CombinedOutput(); err == nil {
		t.Logf("%s: %s", gopls, strings.TrimSpace(string(out)))
	}
	mod := t.TempDir()
	if err := os.WriteFile(filepath.Join(mod, "go.mod"), []byte(lspGoMod), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(mod, "main.go"), []byte(lspDiskSrc), 0o644); err != nil {
		t.Fatal(err)
	}
	rootURI := "file://" + mod
	fileURI := rootURI + "/main.go"
	initParams := map[string]any{
		"processId":        nil,
		"rootUri":          rootURI,
		"workspaceFolders": []any{map[string]any{"uri": rootURI, "name": "hover"}},
		"capabilities": map[string]any{
			"textDocument": map[string]any{"hover": map[string]any{"contentFormat": []any{"markdown", "plaintext"}}},
			"workspace":    map[string]any{"configuration": true, "workspaceFolders": true},
		},
	}

	d := startDaemon(t, "--framing", "lsp", "--", gopls)
	waitServing(t, d)

	c1 := dial(t, d)
	init1 := lspCall(c1, "init-1", "initialize", initParams)
	if hp := field(init1, "result", "capabilities", "hoverProvider"); hp == nil || hp == false {
		t.Fatalf("gopls initialize result without hoverProvider: %v", init1)
	}
	if name := field(init1, "result", "serverInfo", "name"); name != "gopls" {
		t.Fatalf("serverInfo.name = %v, want gopls", name)
	}
	c1.send(map[string]any{"method": "initialized", "params": map[string]any{}})
	c1.send(map[string]any{"method": "textDocument/didOpen", "params": map[string]any{
		"textDocument": map[string]any{"uri": fileURI, "languageId": "go", "version": 1, "text": lspBufferSrc},
	}})

	greeting := map[string]any{"textDocument": map[string]any{"uri": fileURI}, "position": lspPosition(t, lspBufferSrc, "func main", "Greeting")}
	h1 := hoverText(t, lspCall(c1, "hover-1", "textDocument/hover", greeting))
	for _, want := range []string{"func Greeting(name string) string", lspBufferDoc} {
		if !strings.Contains(h1, want) {
			t.Fatalf("hover on Greeting = %q, want it to contain %q", h1, want)
		}
	}

	// A second editor joins: its initialize is answered from the cache (a
	// second initialize reaching gopls would be refused by it).
	c2 := dial(t, d)
	init2 := lspCall(c2, "init-2", "initialize", initParams)
	r1, _ := json.Marshal(init1["result"])
	r2, _ := json.Marshal(init2["result"])
	if string(r1) != string(r2) {
		t.Fatalf("second initialize result differs from the first:\n first: %s\nsecond: %s", r1, r2)
	}
	c2.send(map[string]any{"method": "initialized", "params": map[string]any{}})

	// The first editor leaves the LSP way. The bridge answers shutdown
	// itself (result null) and keeps exit from gopls.
	sd := lspCall(c1, "shutdown-1", "shutdown", nil)
	if r, ok := sd["result"]; !ok || r != nil {
		t.Fatalf("shutdown answer = %v, want result null", sd)
	}
	c1.send(map[string]any{"method": "exit"})
	c1.c.Close()

	// gopls is still running, still initialised, and still holds the
	// first editor's buffer.
	h2 := hoverText(t, lspCall(c2, "hover-2", "textDocument/hover", greeting))
	if !strings.Contains(h2, lspBufferDoc) {
		t.Fatalf("hover after the other client's shutdown = %q, want the editor buffer's doc %q (gopls restarted or lost state?)", h2, lspBufferDoc)
	}
	printlnAt := map[string]any{"textDocument": map[string]any{"uri": fileURI}, "position": lspPosition(t, lspBufferSrc, "func main", "Println")}
	if h3 := hoverText(t, lspCall(c2, "hover-3", "textDocument/hover", printlnAt)); !strings.Contains(h3, "func fmt.Println(") {
		t.Fatalf("hover on fmt.Println = %q, want its signature", h3)
	}
}
