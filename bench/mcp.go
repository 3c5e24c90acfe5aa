package bench

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/agentbridge/agentbridge/codec/jsonrpc"
)

// The mcp scenario measures MCP Streamable HTTP (revision 2025-11-25) on
// the bridge's /mcp against supergateway in its stateful streamableHttp
// mode, both serving the same MCP stdio server
// (@modelcontextprotocol/server-everything): tools/call echo round trips
// with one client, and a storm of --mcp-clients clients that each
// initialize, call echo --mcp-calls times and end their session (DELETE)
// at once. The client is Go's net/http with keep-alive, as an MCP SDK
// client's fetch is: what each server's connection handling costs counts.

const (
	sysSupergateway = "supergateway"
	mcpProtocol     = "2025-11-25"
)

// mcpTarget is an MCP Streamable HTTP endpoint.
type mcpTarget struct {
	name  string
	url   string // http://host:port/mcp
	token string // Bearer token, or ""
	pid   int
}

// mcpClient is one MCP session over Streamable HTTP. One goroutine at a
// time may use it.
type mcpClient struct {
	t       mcpTarget
	hc      *http.Client
	session string
	next    int64
}

// newMCPTransport is the connection pool of a run: enough idle
// connections kept for every client of a storm.
func newMCPTransport(clients int) *http.Transport {
	return &http.Transport{
		MaxIdleConns: clients * 2, MaxIdleConnsPerHost: clients * 2, IdleConnTimeout: 30 * time.Second,
		DisableCompression: true, DialContext: (&net.Dialer{Timeout: 5 * time.Second}).DialContext,
	}
}

// open initializes an MCP session: initialize, its Mcp-Session-Id, then
// notifications/initialized.
func (t mcpTarget) open(ctx context.Context, hc *http.Client) (*mcpClient, error) {
	c := &mcpClient{t: t, hc: hc}
	init := jsonrpc.AppendRequest(nil, []byte("0"), "initialize", map[string]any{
		"protocolVersion": mcpProtocol, "capabilities": map[string]any{},
		"clientInfo": map[string]string{"name": "agentbridge-bench", "version": "0"}})
	_, hdr, err := c.post(ctx, init, "0")
	if err != nil {
		return nil, fmt.Errorf("initialize: %v", err)
	}
	if c.session = hdr.Get("Mcp-Session-Id"); c.session == "" {
		return nil, errors.New("initialize: no Mcp-Session-Id in the answer")
	}
	if _, _, err := c.post(ctx, []byte(`{"jsonrpc":"2.0","method":"notifications/initialized"}`), ""); err != nil {
		return nil, fmt.Errorf("notifications/initialized: %v", err)
	}
	return c, nil
}

// echo calls the echo tool and checks the answer.
func (c *mcpClient) echo(ctx context.Context, text string) error {
	c.next++
	id := strconv.FormatInt(c.next, 10)
	req := jsonrpc.AppendRequest(nil, []byte(id), "tools/call", map[string]any{"name": "echo", "arguments": map[string]string{"message": text}})
	msg, _, err := c.post(ctx, req, id)
	if err != nil {
		return fmt.Errorf("tools/call echo: %v", err)
	}
	if !bytes.Contains(msg, []byte(text)) {
		return fmt.Errorf("tools/call echo: the answer does not echo %q: %.200s", text, msg)
	}
	return nil
}

// close ends the session (DELETE), so a server can free what it holds.
func (c *mcpClient) close(ctx context.Context) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodDelete, c.t.url, nil)
	if err != nil {
		return err
	}
	c.headers(req)
	resp, err := c.hc.Do(req)
	if err != nil {
		return fmt.Errorf("DELETE: %v", err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("DELETE: %s", resp.Status)
	}
	return nil
}

func (c *mcpClient) headers(req *http.Request) {
	if c.t.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.t.token)
	}
	if c.session != "" {
		req.Header.Set("Mcp-Session-Id", c.session)
		req.Header.Set("MCP-Protocol-Version", mcpProtocol)
	}
}

// post sends one message. For a request (id != "") it returns its
// response, read from a JSON body or from the POST's SSE stream (after
// whatever the server sends first); a notification wants 202.
func (c *mcpClient) post(ctx context.Context, body []byte, id string) ([]byte, http.Header, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, c.t.url, bytes.NewReader(body))
	if err != nil {
		return nil, nil, err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Accept", "application/json, text/event-stream")
	c.headers(req)
	resp, err := c.hc.Do(req)
	if err != nil {
		return nil, nil, err
	}
	defer resp.Body.Close()
	if id == "" {
		_, _ = io.Copy(io.Discard, resp.Body)
		if resp.StatusCode != http.StatusAccepted {
			return nil, nil, fmt.Errorf("%s, want 202 Accepted", resp.Status)
		}
		return nil, resp.Header, nil
	}
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 300))
		return nil, nil, fmt.Errorf("%s: %s", resp.Status, bytes.TrimSpace(b))
	}
	var msg []byte
	if strings.HasPrefix(resp.Header.Get("Content-Type"), "text/event-stream") {
		msg, err = sseResponse(resp.Body, id)
	} else {
		msg, err = io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	}
	if err != nil {
		return nil, nil, err
	}
	// The rest of the stream (nothing, normally) is read so that a
	// keep-alive connection goes back to the pool.
	_, _ = io.Copy(io.Discard, resp.Body)
	h, perr := jsonrpc.Peek(msg)
	if perr != nil || h.Kind != jsonrpc.KindResponse || string(h.ID) != id {
		return nil, nil, fmt.Errorf("not the response to id %s: %.200s", id, msg)
	}
	if h.IsError {
		return nil, nil, fmt.Errorf("error answer: %.300s", msg)
	}
	return msg, resp.Header, nil
}

// sseResponse reads SSE events until the one whose data is the response
// with id, and returns that data.
func sseResponse(r io.Reader, id string) ([]byte, error) {
	sc := newSSEScanner(r)
	for {
		data, err := sc.next()
		if err != nil {
			return nil, fmt.Errorf("the SSE stream ended before the response to id %s: %v", id, err)
		}
		if h, err := jsonrpc.Peek(data); err == nil && h.Kind == jsonrpc.KindResponse && string(h.ID) == id {
			return bytes.Clone(data), nil
		}
	}
}

// sseScanner splits a text/event-stream body into the data of its events
// (data lines joined by \n; comments, event: and id: lines skipped). Owned
// by its reader goroutine.
type sseScanner struct {
	br   *bufio.Reader
	data []byte
	long []byte
}

func newSSEScanner(r io.Reader) *sseScanner {
	if br, ok := r.(*bufio.Reader); ok {
		return &sseScanner{br: br}
	}
	return &sseScanner{br: bufio.NewReaderSize(r, 64<<10)}
}

// next returns the next event's data, borrowed until the next call.
func (s *sseScanner) next() ([]byte, error) {
	s.data = s.data[:0]
	have := false
	for {
		line, err := s.br.ReadSlice('\n')
		if err == bufio.ErrBufferFull {
			s.long = append(s.long[:0], line...)
			for err == bufio.ErrBufferFull {
				line, err = s.br.ReadSlice('\n')
				s.long = append(s.long, line...)
			}
			line = s.long
		}
		if err != nil {
			return nil, err
		}
		line = bytes.TrimRight(line, "\r\n")
		switch {
		case len(line) == 0:
			if have {
				return s.data, nil
			}
		case bytes.HasPrefix(line, []byte("data:")):
			v := bytes.TrimPrefix(line[5:], []byte(" "))
			if have {
				s.data = append(s.data, '\n')
			}
			s.data = append(s.data, v...)
			have = true
		}
	}
}

// mcpServerArgv is the MCP stdio server both systems serve.
func (r *runner) mcpServerArgv() []string { return []string{r.o.MCPServer, "stdio"} }

// mcpMissing says why a path the mcp scenario needs cannot be used, or "".
func mcpMissing(flag, path, what string) string {
	if path == "" {
		return fmt.Sprintf("%s is empty", flag)
	}
	if _, err := os.Stat(path); err != nil {
		return fmt.Sprintf("%s %s not found (%s: run scripts/test-deps.sh, or point %s at it)", flag, path, what, flag)
	}
	return ""
}

func (r *runner) mcp(ctx context.Context) error {
	o := &r.o
	if r.external != nil {
		r.skip("mcp: not run against a running daemon (bench starts the bridge with the MCP server behind it)")
		return nil
	}
	if msg := mcpMissing("--mcp-server", o.MCPServer, "@modelcontextprotocol/server-everything"); msg != "" {
		r.skip("mcp skipped: " + msg)
		return nil
	}
	if err := raiseNoFile(4*o.MCPClients + 256); err != nil {
		return err
	}
	d, err := r.startDaemon(ctx, daemonSpec{agent: r.mcpServerArgv()})
	if err != nil {
		return err
	}
	defer d.stop()
	targets := []mcpTarget{{name: sysBridge, url: "http://" + d.ws.addr + "/mcp", token: benchToken, pid: d.pid}}
	var order []string
	if o.Baselines {
		if msg := mcpMissing("--supergateway", o.Supergateway, "npm supergateway"); msg != "" {
			r.skip("mcp supergateway baseline skipped: " + msg)
		} else {
			p, t, err := r.startSupergateway(ctx)
			if err != nil {
				r.skip("mcp supergateway baseline skipped: " + err.Error())
			} else {
				defer p.stop()
				targets = append(targets, t)
				order = append(order, sysSupergateway)
			}
		}
	}
	p50, p99 := newRounds(), newRounds()
	for round := range r.rounds(true) {
		for _, t := range targets {
			m, err := r.mcpRTT(ctx, t)
			if err != nil {
				if t.name == sysBridge {
					return err
				}
				r.skip(fmt.Sprintf("mcp rtt %s baseline failed: %v", t.name, err))
				continue
			}
			m.Round = round + 1
			r.res.Runs = append(r.res.Runs, m)
			p50.add(round, t.name, m.Latency.P50)
			p99.add(round, t.name, m.Latency.P99)
		}
		if err := d.alive(); err != nil {
			return err
		}
	}
	const rttCase = "tools/call echo"
	r.addRounds(Figure{Scenario: "mcp", Transport: "http", Case: rttCase, Metric: "p50", Unit: "µs", Better: "lower"}, p50, order)
	r.addRounds(Figure{Scenario: "mcp", Transport: "http", Case: rttCase, Metric: "p99", Unit: "µs", Better: "lower"}, p99, order)

	kase := fmt.Sprintf("storm %d clients × %d calls", o.MCPClients, o.MCPCalls)
	took, calls := map[string]float64{}, map[string]float64{}
	var bridgeStorm Measurement
	for _, t := range targets {
		m, err := r.mcpStorm(ctx, t, kase)
		if err != nil {
			if t.name == sysBridge {
				return err
			}
			r.skip(fmt.Sprintf("mcp storm %s baseline failed: %v", t.name, err))
			continue
		}
		r.res.Runs = append(r.res.Runs, m)
		took[t.name], calls[t.name] = m.StormMs, m.Latency.P99
		if t.name == sysBridge {
			bridgeStorm = m
		}
	}
	if err := d.alive(); err != nil {
		return err
	}
	delete(took, sysBridge)
	delete(calls, sysBridge)
	r.addFigure(Figure{Scenario: "mcp", Transport: "http", Case: kase, Metric: "all done", Unit: "ms", Better: "lower", Value: bridgeStorm.StormMs}, took, order)
	r.addFigure(Figure{Scenario: "mcp", Transport: "http", Case: kase, Metric: "call p99", Unit: "µs", Better: "lower", Value: bridgeStorm.Latency.P99}, calls, order)
	return nil
}

// startSupergateway serves the same MCP server with supergateway,
// stateful Streamable HTTP on /mcp. It spawns one server per MCP session,
// so its process group is killed when it stops.
func (r *runner) startSupergateway(ctx context.Context) (*proc, mcpTarget, error) {
	port, err := freePort()
	if err != nil {
		return nil, mcpTarget{}, err
	}
	addr := "127.0.0.1:" + strconv.Itoa(port)
	argv := []string{r.o.Supergateway, "--stdio", strings.Join(r.mcpServerArgv(), " "), "--outputTransport", "streamableHttp",
		"--stateful", "--port", strconv.Itoa(port), "--logLevel", "none"}
	sctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	p, err := startProcGroup(sctx, "supergateway", argv)
	if err != nil {
		return nil, mcpTarget{}, err
	}
	if err := waitListening(sctx, "tcp", addr); err != nil {
		p.stop()
		return nil, mcpTarget{}, fmt.Errorf("supergateway: %v: %s", err, p.tail)
	}
	return p, mcpTarget{name: sysSupergateway, url: "http://" + addr + "/mcp", pid: p.pid()}, nil
}

// mcpRTT is one client calling echo with one call in flight for
// warm-up + duration (at most --count calls).
func (r *runner) mcpRTT(ctx context.Context, t mcpTarget) (Measurement, error) {
	o := &r.o
	ctx, cancel := r.runCtx(ctx)
	defer cancel()
	tr := newMCPTransport(1)
	defer tr.CloseIdleConnections()
	c, err := t.open(ctx, &http.Client{Transport: tr})
	if err != nil {
		return Measurement{}, fmt.Errorf("%s: %v", t.name, err)
	}
	defer func() { _ = c.close(context.WithoutCancel(ctx)) }()
	var done atomic.Int64
	r.prog.set("mcp rtt "+t.name, func() string { return fmt.Sprintf("%d calls", done.Load()) })
	gcNow()
	h := newHist()
	warmEnd := time.Now().Add(o.Warmup)
	end := warmEnd.Add(o.Duration)
	for i := 0; ; i++ {
		t0 := time.Now()
		if !t0.Before(end) || h.TotalCount() >= int64(o.Count) {
			break
		}
		if err := c.echo(ctx, "rtt "+strconv.Itoa(i)); err != nil {
			return Measurement{}, fmt.Errorf("%s: after %d calls: %v", t.name, i, err)
		}
		if t0.After(warmEnd) {
			record(h, time.Since(t0))
		}
		done.Add(1)
	}
	m := Measurement{Scenario: "mcp", Transport: "http", Case: "tools/call echo", System: t.name, Conns: 1,
		Seconds: o.Duration.Seconds(), Count: h.TotalCount(), Latency: summary(h)}
	if m.Latency == nil {
		return Measurement{}, fmt.Errorf("%s: no call completed after the warm-up", t.name)
	}
	m.Rate = float64(m.Count) / m.Seconds
	return m, nil
}

// mcpStorm starts --mcp-clients clients at once; each initializes, calls
// echo --mcp-calls times and ends its session. It measures the time until
// the last is done and every call's latency; any failure fails the run.
func (r *runner) mcpStorm(ctx context.Context, t mcpTarget, kase string) (Measurement, error) {
	o := &r.o
	ctx, cancel := context.WithTimeout(ctx, sessionsBound*o.Timeout)
	defer cancel()
	tr := newMCPTransport(o.MCPClients)
	defer tr.CloseIdleConnections()
	hc := &http.Client{Transport: tr}
	var done atomic.Int64
	r.prog.set("mcp storm "+t.name, func() string { return fmt.Sprintf("%d of %d clients done", done.Load(), o.MCPClients) })
	var before int64
	if t.pid != 0 {
		before, _ = rssKB(t.pid)
	}
	lat := newShardedHist()
	gcNow()
	start := time.Now()
	err := parallel(ctx, o.MCPClients, o.MCPClients, func(i int) error {
		lb := lat.batch(i)
		defer lb.flush()
		c, err := t.open(ctx, hc)
		if err != nil {
			return fmt.Errorf("client %d: %v", i+1, err)
		}
		for k := range o.MCPCalls {
			t0 := time.Now()
			if err := c.echo(ctx, fmt.Sprintf("storm %d.%d", i, k)); err != nil {
				return fmt.Errorf("client %d: %v", i+1, err)
			}
			lb.add(int64(time.Since(t0)))
		}
		if err := c.close(ctx); err != nil {
			return fmt.Errorf("client %d: %v", i+1, err)
		}
		done.Add(1)
		return nil
	})
	took := time.Since(start)
	if err != nil {
		return Measurement{}, fmt.Errorf("%s: %d of %d clients done in %v: %v", t.name, done.Load(), o.MCPClients, took.Round(time.Millisecond), err)
	}
	m := Measurement{Scenario: "mcp", Transport: "http", Case: kase, System: t.name, Conns: o.MCPClients,
		Seconds: took.Seconds(), Count: int64(o.MCPClients * o.MCPCalls), StormMs: float64(took) / float64(time.Millisecond),
		Latency: summary(lat.merged())}
	m.Rate = float64(m.Count) / m.Seconds
	if t.pid != 0 {
		if after, err := rssKB(t.pid); err == nil {
			m.RSSBeforeKB, m.RSSAfterKB = before, after
		}
	}
	if t.name == sysSupergateway {
		m.Note = "one server process per MCP session (supergateway's stateful mode)"
	}
	return m, nil
}
