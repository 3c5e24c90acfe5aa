package auth

import (
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
)

// MinTokenLen is the shortest token accepted. 16 characters of a random
// base64url token carry 96 bits, beyond online guessing; shorter tokens are
// almost certainly a hand-typed password or a truncated paste.
const MinTokenLen = 16

// maxTokensFile bounds what LoadTokens reads: a tokens file is a few lines,
// and a wrong path (a log, a binary) should fail fast, not fill memory.
const maxTokensFile = 1 << 20

// Grant pairs a token with the role it carries.
type Grant struct {
	Role  Role
	Token string
}

// Tokens is an immutable set of tokens. Safe for concurrent use.
type Tokens struct {
	entries []tokenEntry
}

type tokenEntry struct {
	// digest, not the token: Lookup compares fixed-size digests, so its
	// timing depends neither on where a guess first differs nor on the
	// length of the real token.
	digest [sha256.Size]byte
	role   Role
}

// checkToken says what is wrong with tok, without repeating it.
func checkToken(tok string) error {
	if len(tok) < MinTokenLen {
		return fmt.Errorf("token is %d characters, want at least %d", len(tok), MinTokenLen)
	}
	for i := 0; i < len(tok); i++ {
		if !tokenChar(tok[i]) {
			return fmt.Errorf("token character %d is not allowed (use letters, digits and !$%%&'*+-.^_`|~)", i+1)
		}
	}
	return nil
}

// tokenChar reports whether c is an RFC 7230 tchar other than '#': tokens
// must fit in a Sec-WebSocket-Protocol entry, and '#' starts a comment in
// the tokens file.
func tokenChar(c byte) bool {
	switch {
	case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		return true
	}
	return strings.IndexByte("!$%&'*+-.^_`|~", c) >= 0
}

// NewTokens builds a token set. It rejects an invalid role, a token that
// fails the rules in the package comment, and a token granted twice; the
// error names the grant by index, never by token.
func NewTokens(grants []Grant) (*Tokens, error) {
	t := &Tokens{entries: make([]tokenEntry, 0, len(grants))}
	seen := make(map[[sha256.Size]byte]int, len(grants))
	for i, g := range grants {
		if !g.Role.Valid() {
			return nil, fmt.Errorf("%w: grant %d: invalid role %d", ErrBadToken, i, uint8(g.Role))
		}
		if err := checkToken(g.Token); err != nil {
			return nil, fmt.Errorf("%w: grant %d: %v", ErrBadToken, i, err)
		}
		d := sha256.Sum256([]byte(g.Token))
		if j, dup := seen[d]; dup {
			return nil, fmt.Errorf("%w: grant %d: duplicate token (also grant %d)", ErrBadToken, i, j)
		}
		seen[d] = i
		t.entries = append(t.entries, tokenEntry{digest: d, role: g.Role})
	}
	return t, nil
}

// Len returns the number of tokens. Safe from any goroutine.
func (t *Tokens) Len() int {
	if t == nil {
		return 0
	}
	return len(t.entries)
}

// Lookup returns the role token carries. It hashes the candidate once and
// compares the digest with every entry in constant time, without stopping
// at a match, so neither the position nor the existence of a match shows
// in its timing. A nil *Tokens knows no token. Safe from any goroutine.
func (t *Tokens) Lookup(token string) (Role, bool) {
	if t == nil || token == "" {
		return 0, false
	}
	d := digest(token)
	role := 0
	for i := range t.entries {
		e := &t.entries[i]
		eq := subtle.ConstantTimeCompare(d[:], e.digest[:])
		role = subtle.ConstantTimeSelect(eq, int(e.role), role)
	}
	return Role(role), role != 0
}

// digest hashes token without allocating for tokens of ordinary length
// (a plain []byte conversion of more than 32 bytes allocates).
func digest(token string) [sha256.Size]byte {
	var buf [128]byte
	if len(token) <= len(buf) {
		return sha256.Sum256(append(buf[:0], token...))
	}
	return sha256.Sum256([]byte(token))
}

// LoadTokens reads a tokens file (format in the package comment). Errors
// wrap ErrTokensFile (content) or the os error (reading), and name the
// path and line number but never a token.
func LoadTokens(path string) (*Tokens, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("auth: tokens file: %w", err)
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxTokensFile+1))
	if err != nil {
		return nil, fmt.Errorf("auth: tokens file: %w", err)
	}
	if len(data) > maxTokensFile {
		return nil, fmt.Errorf("%w %s: larger than %d bytes; is this the right file?", ErrTokensFile, path, maxTokensFile)
	}
	return parseTokens(path, string(data))
}

// parseTokens parses the content of a tokens file named name.
func parseTokens(name, data string) (*Tokens, error) {
	data = strings.TrimPrefix(data, "\ufeff") // editors on Windows add a BOM
	var grants []Grant
	lineOf := make(map[string]int) // token -> line, for the duplicate message
	n := 0
	for line := range strings.Lines(data) {
		n++
		if i := strings.IndexByte(line, '#'); i >= 0 {
			line = line[:i]
		}
		fields := strings.Fields(line)
		bad := func(format string, args ...any) error {
			return fmt.Errorf("%w %s line %d: %s", ErrTokensFile, name, n, fmt.Sprintf(format, args...))
		}
		switch len(fields) {
		case 0:
			continue
		case 1:
			if _, err := ParseRole(fields[0]); err == nil {
				return nil, bad("role %s has no token; want `ROLE TOKEN`", fields[0])
			}
			return nil, bad("want `ROLE TOKEN`, found one field")
		case 2:
		default:
			return nil, bad("want `ROLE TOKEN`, found %d fields", len(fields))
		}
		role, err := ParseRole(fields[0])
		if err != nil {
			// A long "role" is most likely a token on a swapped line: say
			// so without repeating it.
			if len(fields[0]) >= MinTokenLen {
				return nil, bad("unknown role (a %d-character value; is the line `TOKEN ROLE` instead of `ROLE TOKEN`?)", len(fields[0]))
			}
			return nil, bad("unknown role %q (want viewer, operator or client)", fields[0])
		}
		if err := checkToken(fields[1]); err != nil {
			return nil, bad("%v", err)
		}
		if first, dup := lineOf[fields[1]]; dup {
			return nil, bad("duplicate token (also on line %d)", first)
		}
		lineOf[fields[1]] = n
		grants = append(grants, Grant{Role: role, Token: fields[1]})
	}
	if len(grants) == 0 {
		return nil, fmt.Errorf("%w %s: no tokens; want one `ROLE TOKEN` per line", ErrTokensFile, name)
	}
	return NewTokens(grants)
}

// GenerateToken returns 32 random bytes from crypto/rand as unpadded
// base64url: 43 characters, all valid in a tokens file, a URL and a
// WebSocket subprotocol.
func GenerateToken() (string, error) {
	var b [32]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", fmt.Errorf("auth: generating token: %w", err)
	}
	return base64.RawURLEncoding.EncodeToString(b[:]), nil
}

// WriteTokenFile writes token as a `client` token in the tokens file
// format, so the file can be passed to --tokens. The file is mode 0600 and
// replaced atomically: it is written to a temporary file in the same
// directory, synced, then renamed over path, so a reader sees the old file
// or the new one, never a partial token.
func WriteTokenFile(path, token string) error {
	if err := checkToken(token); err != nil {
		return fmt.Errorf("%w: %v", ErrBadToken, err)
	}
	content := "# agentbridge access token, generated by agentbridge serve.\n" +
		"# Format: ROLE TOKEN (this file can be passed to --tokens).\n" +
		RoleClient.String() + " " + token + "\n"
	dir := filepath.Dir(path)
	// CreateTemp opens with mode 0600, so the token is never readable by
	// others, not even before the Chmod below.
	f, err := os.CreateTemp(dir, ".agentbridge-token-*")
	if err != nil {
		return fmt.Errorf("auth: writing token file: %w", err)
	}
	tmp := f.Name()
	ok := false
	defer func() {
		if !ok {
			f.Close()
			os.Remove(tmp)
		}
	}()
	if err := f.Chmod(0o600); err != nil {
		return fmt.Errorf("auth: writing token file: %w", err)
	}
	if _, err := f.WriteString(content); err != nil {
		return fmt.Errorf("auth: writing token file: %w", err)
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("auth: writing token file: %w", err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("auth: writing token file: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("auth: writing token file: %w", err)
	}
	ok = true
	// Make the rename itself durable. Best effort: some filesystems refuse
	// to sync a directory, and the file is already complete either way.
	if d, err := os.Open(dir); err == nil {
		d.Sync()
		d.Close()
	}
	return nil
}

// TokensFileWarning says what is unsafe about the tokens file at path
// (readable or writable by others than its owner), or "" when nothing is.
// The daemon logs it: refusing would break a deployment that shares the
// file on purpose, but a person must hear of it.
func TokensFileWarning(path string) string {
	fi, err := os.Stat(path)
	if err != nil {
		return ""
	}
	if perm := fi.Mode().Perm(); perm&0o077 != 0 {
		return fmt.Sprintf("tokens file %s has mode %04o: other users may read or change the tokens; run `chmod 600 %s`", path, perm, path)
	}
	return ""
}

// RemoveTokenFile removes the token file at path if it still holds token:
// a file another daemon has written since (or that a person replaced) is
// left alone.
func RemoveTokenFile(path, token string) error {
	b, err := os.ReadFile(path)
	if err != nil {
		if os.IsNotExist(err) {
			return nil
		}
		return err
	}
	if !strings.Contains(string(b), " "+token+"\n") {
		return nil
	}
	return os.Remove(path)
}
