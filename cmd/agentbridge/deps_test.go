package main

import (
	"os/exec"
	"strings"
	"testing"
)

const mod = "github.com/agentbridge/agentbridge/"

// TestDeps enforces the import graph: leaves import none of the project, the
// routing core knows nothing of sockets or gnet, and each third-party
// library has one importer.
func TestDeps(t *testing.T) {
	out, err := exec.Command("go", "list", "-f", "{{.ImportPath}} {{join .Imports \" \"}}", mod+"...").CombinedOutput()
	if err != nil {
		t.Fatalf("go list: %v\n%s", err, out)
	}
	imports := map[string][]string{}
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		f := strings.Fields(line)
		if len(f) == 0 || !strings.HasPrefix(f[0], mod) {
			continue // go list's warnings (a symlinked node_modules)
		}
		imports[strings.TrimPrefix(f[0], mod)] = f[1:]
	}
	own := func(pkg string) []string {
		var r []string
		for _, i := range imports[pkg] {
			if strings.HasPrefix(i, mod) {
				r = append(r, strings.TrimPrefix(i, mod))
			}
		}
		return r
	}
	allowed := map[string][]string{
		"codec/jsonrpc": {},
		"codec/ndjson":  {},
		"codec/lsp":     {},
		"codec/ws":      {},
		"ring":          {},
		"breaker":       {},
		"auth":          {},
		"wire":          {"codec/ws", "ring"},
		"agent":         {"codec/ndjson", "codec/lsp", "internal/lograte"},
		// The routing core sees the agent, the store and the audit log
		// through interfaces of its own; cmd wires the concrete types.
		"session": {"auth", "codec/jsonrpc", "wire", "internal/lograte"},
		// PTY bytes never reach a session's log or the agent: the terminal
		// knows neither.
		"terminal":         {"audit", "auth"},
		"web":              {},
		"internal/lograte": {},
		// The fleet sees the core through its interfaces (Journal, Hub);
		// the core never imports it.
		"fleet": {"auth", "codec/jsonrpc", "session", "wire"},
		// One connection endpoint for every transport; it knows the hub,
		// never a socket.
		"delivery": {"auth", "breaker", "codec/jsonrpc", "ring", "session", "wire"},
		"store":    {},
		"audit":    {},
		// The HTTP front decides for both TCP listeners and knows neither
		// (no loop, no tlsserve, no gnet: see forbidden).
		"httpfront": {"auth", "codec/jsonrpc", "codec/ws", "delivery", "session", "terminal", "web", "wire"},
		// The listeners are siblings: neither imports the other; cmd
		// starts both.
		"loop":     {"agent", "auth", "breaker", "codec/jsonrpc", "codec/ndjson", "codec/ws", "delivery", "httpfront", "ring", "session", "terminal", "wire"},
		"tlsserve": {"auth", "codec/ws", "delivery", "session", "wire"},
		// The client side and the load generator speak the wire protocol
		// only (bench is black-box: see below).
		"connect":         {"codec/jsonrpc", "codec/ndjson", "wire"},
		"bench":           {"codec/jsonrpc", "codec/ws"},
		"demoagent":       {},
		"internal/config": {},
	}
	// Every package is constrained: a new one must say what it may import.
	for pkg := range imports {
		if _, ok := allowed[pkg]; !ok && pkg != "cmd/agentbridge" && !strings.HasPrefix(pkg, "test/") && !strings.HasSuffix(pkg, ".test") {
			t.Errorf("package %s has no entry in TestDeps' allowed imports", pkg)
		}
	}
	for pkg, ok := range allowed {
		if _, exists := imports[pkg]; !exists {
			t.Errorf("package %s not found", pkg)
			continue
		}
	next:
		for _, dep := range own(pkg) {
			for _, a := range ok {
				if dep == a {
					continue next
				}
			}
			t.Errorf("%s imports %s; allowed: %v", pkg, dep, ok)
		}
	}
	forbidden := map[string][]string{
		"github.com/panjf2000/gnet":     {"loop"},
		"github.com/sony/gobreaker":     {"breaker"},
		"github.com/bytedance/sonic":    {"codec/jsonrpc"},
		"github.com/lxzan/gws":          {"tlsserve", "connect", "bench"},
		"github.com/creack/pty":         {"terminal"},
		"github.com/charmbracelet/x/vt": {"terminal"},
		"net":                           {"loop", "tlsserve", "httpfront", "connect", "bench", "cmd/agentbridge"},
		"github.com/prometheus/client_": {"loop", "tlsserve", "cmd/agentbridge"},
		"github.com/nats-io/nats.go":    {"fleet"},
		// The server is the tests' (test/e2e starts it in-process).
		"github.com/nats-io/nats-server": {},
	}
	for lib, users := range forbidden {
		for pkg, deps := range imports {
			if strings.HasSuffix(pkg, ".test") || strings.HasPrefix(pkg, "test/") {
				continue
			}
			for _, d := range deps {
				if lib == "net" && d != "net" {
					continue // net/http request parsing is fine; sockets are not
				}
				if d != lib && !strings.HasPrefix(d, lib+"/") && !(strings.HasSuffix(lib, "_") && strings.HasPrefix(d, lib)) {
					continue
				}
				okUser := false
				for _, u := range users {
					if pkg == u || strings.HasPrefix(pkg, u+"/") {
						okUser = true
					}
				}
				if !okUser && lib != "net" {
					t.Errorf("%s imports %s; only %v may", pkg, d, users)
				}
				if lib == "net" && (pkg == "session" || strings.HasPrefix(pkg, "codec") || pkg == "ring" || pkg == "wire" || pkg == "delivery") {
					t.Errorf("%s imports net: the core and the codecs know nothing of sockets", pkg)
				}
			}
		}
	}
	for pkg := range imports {
		if pkg == "bench" || strings.HasPrefix(pkg, "bench/") {
			for _, d := range own(pkg) {
				if d == "loop" || d == "session" {
					t.Errorf("bench imports %s: the benchmark suite is black-box", d)
				}
			}
		}
	}
}
