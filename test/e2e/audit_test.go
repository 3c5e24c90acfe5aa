package e2e

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestAuditRecordsAuthFailures: refused credentials and origins reach the
// audit log as one JSON line each, naming the problem but never the token.
func TestAuditRecordsAuthFailures(t *testing.T) {
	t.Parallel()
	auditFile := filepath.Join(t.TempDir(), "audit.jsonl")
	d := netDaemon(t, append([]string{"--audit", auditFile}, fakeAgentCmd()...)...)
	const wrong = "not-the-right-token-0123456789"
	httpGet(t, "http://"+d.listen+"/metrics", nil, wrong, 401)
	httpGet(t, "http://"+d.listen+"/metrics", nil, "", 401)
	httpGet(t, "http://"+d.listen+"/acp", nil, e2eClientToken, 403, "Origin", "https://evil.example",
		"Connection", "Upgrade", "Upgrade", "websocket", "Sec-WebSocket-Version", "13", "Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==")
	var text string
	deadline := time.Now().Add(wait)
	for {
		b, _ := os.ReadFile(auditFile)
		text = string(b)
		if strings.Count(text, `"outcome":"denied"`) >= 3 || time.Now().After(deadline) {
			break
		}
		time.Sleep(20 * time.Millisecond) // the audit writer flushes off the router's lock
	}
	for _, want := range []string{"token rejected", "no token", `origin \"https://evil.example\" not allowed`} {
		if !strings.Contains(text, want) {
			t.Fatalf("audit log lacks %q:\n%s", want, text)
		}
	}
	if strings.Contains(text, wrong) || strings.Contains(text, e2eClientToken) {
		t.Fatalf("audit log contains a token:\n%s", text)
	}
	if fi, err := os.Stat(auditFile); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("audit file mode: %v %v", fi.Mode(), err)
	}
}
