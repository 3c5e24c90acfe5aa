package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"math"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/agentbridge/agentbridge/codec/jsonrpc"
)

// call sends a request and reads until its response, which it returns
// (copied). Messages before it are skipped. It is for setup, before a
// connection has a reader goroutine.
func call(c *msgConn, id int64, method string, params any) ([]byte, error) {
	msg := jsonrpc.AppendRequest(nil, strconv.AppendInt(nil, id, 10), method, params)
	if err := c.Send(msg); err != nil {
		return nil, err
	}
	for {
		m, err := c.Next()
		if err != nil {
			return nil, fmt.Errorf("%s: %v", method, err)
		}
		if responseID(m) != id {
			continue
		}
		var resp struct {
			Error *jsonrpc.Error `json:"error"`
		}
		if err := json.Unmarshal(m, &resp); err != nil {
			return nil, fmt.Errorf("%s: unreadable response: %v", method, err)
		}
		if resp.Error != nil {
			return nil, fmt.Errorf("%s: error %d: %s", method, resp.Error.Code, resp.Error.Message)
		}
		return bytes.Clone(m), nil
	}
}

// streamProto is how a fleet's clients join a stream and how its owner
// starts and stops it: sessions of the bridge, or groups of the broadcast
// baseline.
type streamProto interface {
	// create makes stream i with owner as its first member.
	create(owner *msgConn, i int) (id string, err error)
	// join makes c a member of stream id.
	join(c *msgConn, id string) error
	// start and stop are sent by the owner; stop ends the stream early.
	start(owner *msgConn, id string) error
	stop(owner *msgConn, id string) error
	// isEnd reports the message that tells the owner the stream is over.
	isEnd(msg []byte) bool
	// sent says how many chunks each stream sent, once every stream is
	// over. end is the owner's end message of each stream (copied).
	sent(ctx context.Context, ends map[string][]byte) (map[string]int64, error)
}

// bridgeProto streams demo-agent prompts through the bridge. Every member
// asks to be degraded rather than disconnected when it falls behind, so
// the figures count what was delivered and what was announced as dropped.
type bridgeProto struct {
	s system // for bridge/sessions
}

const promptID = 3

func (bridgeProto) create(owner *msgConn, _ int) (string, error) {
	if _, err := call(owner, 1, "bridge/hello", map[string]any{"onSlow": "degrade"}); err != nil {
		return "", err
	}
	m, err := call(owner, 2, "session/new", map[string]any{"cwd": "/", "mcpServers": []any{}})
	if err != nil {
		return "", err
	}
	sid := jsonrpc.ResultSessionID(m)
	if sid == nil {
		return "", fmt.Errorf("session/new: no sessionId in %s", m)
	}
	return string(sid), nil
}

func (bridgeProto) join(c *msgConn, id string) error {
	if _, err := call(c, 1, "bridge/hello", map[string]any{"onSlow": "degrade"}); err != nil {
		return err
	}
	_, err := call(c, 2, "bridge/attach", map[string]any{"sessionId": id})
	return err
}

func (bridgeProto) start(owner *msgConn, id string) error {
	return owner.Send(jsonrpc.AppendRequest(nil, []byte(strconv.Itoa(promptID)), "session/prompt",
		map[string]any{"sessionId": id, "prompt": []any{map[string]string{"type": "text", "text": "stream"}}}))
}

func (bridgeProto) stop(owner *msgConn, id string) error {
	return owner.Send(jsonrpc.AppendNotification(nil, "session/cancel", map[string]any{"sessionId": id}))
}

func (bridgeProto) isEnd(msg []byte) bool { return responseID(msg) == promptID }

// sent is each session's last seq: the prompt's response may overtake
// chunks still queued for the owner (it is control, they are data), so the
// daemon's count is the one to trust. The sessions carry nothing but the
// one prompt's chunks (no tool calls, no second prompt), so seq = chunks.
func (p bridgeProto) sent(ctx context.Context, _ map[string][]byte) (map[string]int64, error) {
	seqs, err := finalSeqs(ctx, p.s)
	if err != nil {
		return nil, err
	}
	out := make(map[string]int64, len(seqs))
	for id, seq := range seqs {
		out[id] = int64(seq)
	}
	return out, nil
}

// broadcastProto drives the helper's fan-out server.
type broadcastProto struct {
	size int
	pace time.Duration
}

func waitPrefix(c *msgConn, prefix string) error {
	for {
		m, err := c.Next()
		if err != nil {
			return err
		}
		if bytes.HasPrefix(m, []byte(prefix)) {
			return nil
		}
	}
}

func (p broadcastProto) create(owner *msgConn, i int) (string, error) {
	id := "g" + strconv.Itoa(i)
	return id, p.join(owner, id)
}

func (broadcastProto) join(c *msgConn, id string) error {
	if err := c.Send([]byte(`{"join":` + strconv.Quote(id) + `}`)); err != nil {
		return err
	}
	return waitPrefix(c, `{"joined":`)
}

func (p broadcastProto) start(owner *msgConn, id string) error {
	return owner.Send(fmt.Appendf(nil, `{"stream":%q,"n":%d,"size":%d,"pace":%d}`, id, math.MaxInt32, p.size, p.pace.Nanoseconds()))
}

func (broadcastProto) stop(owner *msgConn, id string) error {
	return owner.Send([]byte(`{"stop":` + strconv.Quote(id) + `}`))
}

func (broadcastProto) isEnd(msg []byte) bool { return bytes.HasPrefix(msg, []byte(`{"done":`)) }

// sent reads the counts from the done messages, which the helper queues
// after the stream's last chunk.
func (broadcastProto) sent(_ context.Context, ends map[string][]byte) (map[string]int64, error) {
	out := make(map[string]int64, len(ends))
	for id, m := range ends {
		var d struct {
			N int64 `json:"n"`
		}
		if err := json.Unmarshal(m, &d); err != nil {
			return nil, fmt.Errorf("unreadable end of stream %s: %s", id, m)
		}
		out[id] = d.N
	}
	return out, nil
}

// fleetClient is one reading client of a fleet. Its counters are written by
// its reader goroutine and read by the driver.
type fleetClient struct {
	c      *msgConn
	stream int
	owner  bool

	recv     atomic.Int64 // stamped chunks received
	measured atomic.Int64 // of which received in the measured window
	stamped  atomic.Int64 // of which the agent sent in the measured window
	gapped   atomic.Int64 // chunks bridge/gap said this client will not get

	expected atomic.Int64 // chunks the stream sent; MaxInt64 until known
	complete chan struct{}
	once     sync.Once

	ended  chan struct{} // owner: the stream's end arrived
	endMsg []byte        // owner: the end message; read after ended

	done chan struct{} // the reader returned
	err  error         // its error; read after done
}

func (fc *fleetClient) checkComplete() {
	if fc.recv.Load()+fc.gapped.Load() >= fc.expected.Load() {
		fc.once.Do(func() { close(fc.complete) })
	}
}

// fleet is S streams with their members, reading.
type fleet struct {
	proto   streamProto
	ids     []string
	clients []*fleetClient
	hist    *shardedHist
	// The measured window, unix ns: chunks received in [from, to) count.
	from, to atomic.Int64
	// settle, when set, is waited for once the streams have started and
	// before the warm-up: the state the window must measure (stalled
	// clients that have stopped looking like readers). atEnd, when set,
	// runs as the window closes, the streams still running.
	settle func(context.Context) error
	atEnd  func()
}

// buildFleet connects perStream clients to each of streams streams (the
// first of each is its owner) and starts their readers.
func buildFleet(ctx context.Context, s system, proto streamProto, streams, perStream int, status *atomic.Int64) (*fleet, error) {
	f := &fleet{proto: proto, ids: make([]string, streams), hist: newShardedHist()}
	f.from.Store(math.MaxInt64)
	f.to.Store(math.MaxInt64)
	for i := range streams {
		c, err := s.dial(ctx, connOpts{})
		if err != nil {
			f.close()
			return nil, fmt.Errorf("connect: %v", err)
		}
		fc := newFleetClient(c, i, true)
		f.clients = append(f.clients, fc)
		if f.ids[i], err = proto.create(c, i); err != nil {
			f.close()
			return nil, err
		}
		status.Add(1)
	}
	members := make([]*fleetClient, streams*(perStream-1))
	err := parallel(ctx, len(members), 32, func(k int) error {
		c, err := dialRetry(ctx, s, connOpts{})
		if err != nil {
			return fmt.Errorf("connect: %v", err)
		}
		fc := newFleetClient(c, k%streams, false)
		members[k] = fc
		if err := proto.join(c, f.ids[fc.stream]); err != nil {
			return err
		}
		status.Add(1)
		return nil
	})
	for _, m := range members {
		if m != nil {
			f.clients = append(f.clients, m)
		}
	}
	if err != nil {
		f.close()
		return nil, err
	}
	for i, fc := range f.clients {
		go f.read(fc, f.hist.batch(i))
	}
	return f, nil
}

func newFleetClient(c *msgConn, stream int, owner bool) *fleetClient {
	fc := &fleetClient{c: c, stream: stream, owner: owner, complete: make(chan struct{}), ended: make(chan struct{}), done: make(chan struct{})}
	fc.expected.Store(math.MaxInt64)
	return fc
}

var gapMethod = []byte(`"bridge/gap"`)

// read is one client's reader goroutine.
func (f *fleet) read(fc *fleetClient, lb *latBatch) {
	defer close(fc.done)
	defer lb.flush()
	for {
		m, err := fc.c.Next()
		if err != nil {
			fc.err = err
			return
		}
		if ts := stampOf(m); ts > 0 {
			fc.recv.Add(1)
			from, to := f.from.Load(), f.to.Load()
			if now := time.Now().UnixNano(); now >= from && now < to {
				lb.add(now - ts)
				fc.measured.Add(1)
			}
			if ts >= from && ts < to {
				fc.stamped.Add(1)
			}
			fc.checkComplete()
			continue
		}
		if fc.owner && f.proto.isEnd(m) {
			fc.endMsg = bytes.Clone(m)
			close(fc.ended)
			continue
		}
		if bytes.Contains(m, gapMethod) {
			var g struct {
				Params struct {
					From uint64 `json:"fromSeq"`
					To   uint64 `json:"toSeq"`
				} `json:"params"`
			}
			if json.Unmarshal(m, &g) == nil && g.Params.To >= g.Params.From {
				fc.gapped.Add(int64(g.Params.To - g.Params.From + 1))
				fc.checkComplete()
			}
		}
	}
}

// fleetStats is what one streaming run delivered.
type fleetStats struct {
	delivered int64   // chunks received in the measured window, all clients
	offered   int64   // chunks the agent sent in the window, times their recipients: exact once drained
	seconds   float64 // the window's length
	dropped   int64   // announced by bridge/gap
	missing   int64   // neither received nor announced once the stream ended
	drained   bool    // every stream ended and every client got its end
	closed    int     // clients the server disconnected
	closeErr  error   // the first one's read error
	lat       *Latency
}

// stream starts every stream and counts what the clients receive during
// [start+warmup, start+warmup+duration) (start: once f.settle returned):
// chunks and their delivery latency (receive time minus the agent's
// stamp), and the chunks stamped in the window. Then it stops the streams and
// waits, up to drain, until every client has everything that was sent, to
// account for drops. A stream at full speed may have queued more than can
// be delivered in drain; then the accounting is left out, not the figures.
func (f *fleet) stream(ctx context.Context, warmup, duration, drain time.Duration) (fleetStats, error) {
	owners := f.clients[:len(f.ids)]
	for i, fc := range owners {
		if err := f.proto.start(fc.c, f.ids[i]); err != nil {
			return fleetStats{}, fmt.Errorf("start stream: %v", err)
		}
	}
	if f.settle != nil {
		if err := f.settle(ctx); err != nil {
			return fleetStats{}, err
		}
	}
	from := time.Now().Add(warmup)
	f.to.Store(from.Add(duration).UnixNano())
	f.from.Store(from.UnixNano())
	if err := sleepCtx(ctx, warmup+duration); err != nil {
		return fleetStats{}, err
	}
	if f.atEnd != nil {
		f.atEnd()
	}
	for i, fc := range owners {
		if err := f.proto.stop(fc.c, f.ids[i]); err != nil {
			return fleetStats{}, fmt.Errorf("stop stream: %v", err)
		}
	}
	st := fleetStats{seconds: duration.Seconds(), drained: true}
	dctx, cancel := context.WithTimeout(ctx, drain)
	defer cancel()
	for _, fc := range owners {
		select {
		case <-fc.ended:
		case <-fc.done:
			return fleetStats{}, fmt.Errorf("a stream owner lost its connection: %v", fc.err)
		case <-dctx.Done():
			st.drained = false
		}
		if !st.drained {
			break
		}
	}
	if st.drained {
		ends := make(map[string][]byte, len(owners))
		for i, fc := range owners {
			ends[f.ids[i]] = fc.endMsg
		}
		sent, err := f.proto.sent(dctx, ends)
		if err != nil {
			return fleetStats{}, fmt.Errorf("counting what the streams sent: %v", err)
		}
		for _, fc := range f.clients {
			n, ok := sent[f.ids[fc.stream]]
			if !ok {
				return fleetStats{}, fmt.Errorf("no count for stream %s", f.ids[fc.stream])
			}
			fc.expected.Store(n)
			fc.checkComplete()
		}
		for _, fc := range f.clients {
			select {
			case <-fc.complete:
			case <-fc.done:
			case <-dctx.Done():
			}
		}
	}
	for _, fc := range f.clients {
		select {
		case <-fc.done:
			st.closed++
			if st.closeErr == nil {
				st.closeErr = fc.err
			}
		default:
		}
	}
	for _, fc := range f.clients {
		fc.c.Close()
	}
	for _, fc := range f.clients {
		<-fc.done
		st.delivered += fc.measured.Load()
		st.offered += fc.stamped.Load()
		st.dropped += fc.gapped.Load()
		if !st.drained {
			continue
		}
		if miss := fc.expected.Load() - fc.recv.Load() - fc.gapped.Load(); miss > 0 {
			st.missing += miss
		}
	}
	st.lat = summary(f.hist.merged())
	if st.delivered == 0 || st.lat == nil {
		var recv int64
		for _, fc := range f.clients {
			recv += fc.recv.Load()
		}
		return st, fmt.Errorf("no stamped chunk was delivered in the measured window (%d before or after it, %d announced dropped; a daemon bench did not start must run `agentbridge demo-agent --stamp --permission=false --tool-calls 0` with enough --chunks)", recv, st.dropped)
	}
	return st, nil
}

// close closes every client connection.
func (f *fleet) close() {
	for _, fc := range f.clients {
		fc.c.Close()
	}
}

// parallel runs fn(0..n-1) on up to workers goroutines and returns the
// first error; after one, the remaining calls are skipped.
func parallel(ctx context.Context, n, workers int, fn func(i int) error) error {
	var (
		next  atomic.Int64
		mu    sync.Mutex
		first error
		wg    sync.WaitGroup
	)
	for range min(workers, n) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1) - 1)
				if i >= n {
					return
				}
				mu.Lock()
				failed := first != nil
				mu.Unlock()
				if failed {
					return
				}
				err := fn(i)
				if err == nil && ctx.Err() != nil {
					err = ctx.Err()
				}
				if err != nil {
					mu.Lock()
					if first == nil {
						first = err
					}
					mu.Unlock()
				}
			}
		}()
	}
	wg.Wait()
	return first
}
