package config

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
)

// SocketName is the default socket's file name inside its private directory.
const SocketName = "agentbridge.sock"

// DefaultSocketDir is the private directory of the default socket and its
// token file: $XDG_RUNTIME_DIR/agentbridge when XDG_RUNTIME_DIR is set,
// else /tmp/agentbridge-$UID. A directory per user, never a shared one: a
// socket directly in /tmp can be created first by anyone (socket squatting).
func DefaultSocketDir() string {
	if d := os.Getenv("XDG_RUNTIME_DIR"); d != "" {
		return filepath.Join(d, "agentbridge")
	}
	return filepath.Join(os.TempDir(), "agentbridge-"+strconv.Itoa(os.Getuid()))
}

// DefaultSocket is the default --uds: DefaultSocketDir()/agentbridge.sock.
func DefaultSocket() string { return filepath.Join(DefaultSocketDir(), SocketName) }

// TokenFileFor names the generated token file after the socket
// (NAME.sock → NAME.token, any other NAME → NAME.token), so two daemons
// whose sockets share a directory never share, overwrite or delete each
// other's token file.
func TokenFileFor(socket string) string {
	return strings.TrimSuffix(socket, ".sock") + ".token"
}

// PrivateDir makes sure dir is a directory only this process's uid can
// write: it is created mode 0700 when missing (its parent must exist), and
// an existing one is refused when it is not a real directory (a symlink
// is refused too), another uid owns it, or its group or others may write
// to it. The error names the directory and says what to do.
func PrivateDir(dir string) error {
	if err := os.Mkdir(dir, 0o700); err != nil && !errors.Is(err, fs.ErrExist) {
		return fmt.Errorf("cannot create the socket directory %s: %w", dir, err)
	}
	return CheckPrivateDir(dir)
}

// CheckPrivateDir is PrivateDir without creating dir.
func CheckPrivateDir(dir string) error {
	fi, err := os.Lstat(dir)
	if err != nil {
		return fmt.Errorf("socket directory %s: %w", dir, err)
	}
	if !fi.IsDir() {
		return fmt.Errorf("socket directory %s is not a directory (%s); remove it or choose another --uds", dir, fi.Mode().Type())
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return fmt.Errorf("socket directory %s: cannot read its owner", dir)
	}
	if uid := os.Getuid(); int(st.Uid) != uid {
		return fmt.Errorf("socket directory %s belongs to uid %d, not to this user (uid %d): another user may be squatting it; remove it or choose another --uds", dir, st.Uid, uid)
	}
	if perm := fi.Mode().Perm(); perm&0o022 != 0 {
		return fmt.Errorf("socket directory %s has mode %04o: group or others may write to it, so another user could replace the socket or the token file; run `chmod 700 %s` or choose another --uds", dir, perm, dir)
	}
	return nil
}
