package loop

import (
	"net"
	"os"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"
)

// TestConnFootprint guards the loop's share of an idle connection
// (docs/architecture.md, "What an idle connection holds"): a Unix
// connection with its NDJSON splitter is one 112-byte object, a TCP one
// 96 bytes, and a WebSocket's protocol state (with its frame reader) 128
// at most. A field added here moves every idle connection to the next
// size class: make it lazy, as conn.pending is.
func TestConnFootprint(t *testing.T) {
	for _, c := range []struct {
		what      string
		size, max uintptr
	}{
		{"unixConn", unsafe.Sizeof(unixConn{}), 112},
		{"conn", unsafe.Sizeof(conn{}), 96},
		{"wsProto", unsafe.Sizeof(wsProto{}), 128},
	} {
		if c.size > c.max {
			t.Errorf("%s is %d bytes, over the %d-byte size class an idle connection pays for it", c.what, c.size, c.max)
		}
	}
}

// TestPeerLabels: the labels built in one allocation read as the ones net
// and the concatenation wrote.
func TestPeerLabels(t *testing.T) {
	if got, want := unixPeer(1000, 4242), "uid:1000 pid:4242"; got != want {
		t.Errorf("unixPeer = %q, want %q", got, want)
	}
	for _, a := range []*net.TCPAddr{
		{IP: net.IPv4(127, 0, 0, 1), Port: 5},
		{IP: net.ParseIP("::1"), Port: 65535},
		{IP: net.ParseIP("::ffff:10.1.2.3"), Port: 80},
		{IP: net.ParseIP("fe80::1"), Port: 8, Zone: "eth0"},
		{IP: net.ParseIP("2001:db8::ff00:42:8329"), Port: 443},
		{Port: 9},
	} {
		if got, want := tcpPeer(a), a.String(); got != want {
			t.Errorf("tcpPeer(%#v) = %q, want %q", a, got, want)
		}
	}
}

// TestAllocsPeerLabels: each label, which stays with its connection, is
// its one allocation; reading a Unix peer's credentials takes none.
func TestAllocsPeerLabels(t *testing.T) {
	if raceEnabled {
		t.Skip("the race detector allocates; make test-allocs runs TestAllocs without -race")
	}
	a := &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 54321}
	if n := testing.AllocsPerRun(100, func() { _ = unixPeer(1000, 123456) }); n != 1 {
		t.Errorf("unixPeer: %v allocations, want 1", n)
	}
	if n := testing.AllocsPerRun(100, func() { _ = tcpPeer(a) }); n != 1 {
		t.Errorf("tcpPeer: %v allocations, want 1", n)
	}
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fds[0])
	defer unix.Close(fds[1])
	uid, pid, err := peerCred(fds[0])
	if err != nil || uid != uint32(os.Getuid()) || pid != int32(os.Getpid()) {
		t.Fatalf("peerCred = uid %d pid %d, %v; want uid %d pid %d", uid, pid, err, os.Getuid(), os.Getpid())
	}
	if n := testing.AllocsPerRun(100, func() { _, _, _ = peerCred(fds[0]) }); n != 0 {
		t.Errorf("peerCred: %v allocations, want 0", n)
	}
	if _, _, err := peerCred(-1); err != unix.EBADF {
		t.Errorf("peerCred(-1): %v, want EBADF", err)
	}
}
