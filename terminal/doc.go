// Package terminal owns the browser terminal (`serve --terminal CMD`): the
// PTYs running CMD, who is attached to each, the bounded scrollback and the
// server-side screen, flow control and the audit records. It knows nothing
// of sockets or sessions: a transport (the gnet loop's /terminal, or the
// TLS listener's) implements Peer for each browser connection and feeds the
// Attachment it gets back. PTY bytes go only to the peers of their own
// terminal: this package imports neither session nor agent, so they can
// never enter a session's log or the agent's input.
//
// # Who may do what
//
// A client-role token opens a terminal, or re-attaches to the one it opened
// (keyed by a hash of the token; the token itself is never kept), and is
// its one writer: keystrokes and resizes reach the PTY. An operator-role
// token watches a running terminal read-only. A viewer is refused. A
// terminal whose writer left outlives it for Config.Linger; a re-attach
// within it gets the screen back (the bounded scrollback is replayed).
//
// # Flow control
//
// One goroutine per terminal reads the PTY and hands each chunk to the
// writer and to every live watcher (one shared copy; Peer.Send never
// blocks). When the writer's backlog is above Config.High the reader stops
// reading until the writer's transport reports it drained (Drained): the
// PTY fills and the shell blocks, as in a real terminal. A watcher above
// Config.High is degraded instead: it gets no more bytes, only a snapshot
// of the screen at most once per Config.SnapshotEvery while its backlog
// allows, and returns to live bytes once a snapshot leaves it nearly
// drained. So a stalled watcher never slows the shell or the writer, and
// costs at most a bounded backlog.
//
// The snapshot's screen comes from a server-side VT emulator
// (charmbracelet/x/vt) fed the last 24 KiB of output when a snapshot is
// due, on the ticker goroutine and outside the terminal's lock. It is not
// fed on the output path: it parses about 0.3 MB/s while scrolling, which
// would throttle every shell to that. The cost is that a full-screen
// program's screen drawn more than 24 KiB of output ago is partial in a
// snapshot (the next redraw fixes it).
//
// # Goroutines
//
// Per terminal: the PTY reader, the input writer (Input queues and never
// blocks), a snapshot ticker, and the process waiter. Manager and
// Attachment methods are safe from any goroutine and never block on a PTY
// or a peer, so they may be called from an event loop.
package terminal
