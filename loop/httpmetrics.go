package loop

import (
	"errors"
	"strconv"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/agentbridge/agentbridge/session"
	"github.com/agentbridge/agentbridge/tlsserve"
)

// httpMetrics are the collectors the HTTP layer adds to the transport's
// registry: half-open drops, and the hub's counters read once per scrape.
type httpMetrics struct {
	halfOpen *prometheus.CounterVec
}

func newHTTPMetrics(reg *prometheus.Registry, hub *session.Hub) *httpMetrics {
	x := &httpMetrics{
		halfOpen: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "agentbridge_half_open_total", Help: "WebSocket peers dropped after two heartbeats without a frame, by transport."}, []string{"transport"}),
	}
	x.halfOpen = register(reg, x.halfOpen)
	register(reg, prometheus.Collector(&hubCollector{h: hub}))
	return x
}

// register registers c, or returns the collector already registered in its
// place (two servers sharing one Metrics, as tests do).
func register[C prometheus.Collector](reg *prometheus.Registry, c C) C {
	if err := reg.Register(c); err != nil {
		var are prometheus.AlreadyRegisteredError
		if errors.As(err, &are) {
			if existing, ok := are.ExistingCollector.(C); ok {
				return existing
			}
		}
		panic(err)
	}
	return c
}

func (m *Metrics) request(path string, status int) {
	m.httpReqs.WithLabelValues(path, strconv.Itoa(status)).Inc()
}

func (m *Metrics) protocolError(code uint16) {
	m.wsProtoErrs.WithLabelValues(strconv.Itoa(int(code))).Inc()
}

// hubCollector exports session.Hub.Stats. Collect reads the stats once, so
// a scrape takes the hub's lock once.
type hubCollector struct{ h *session.Hub }

var (
	descSessions     = prometheus.NewDesc("agentbridge_sessions", "Sessions known to the hub.", nil, nil)
	descClients      = prometheus.NewDesc("agentbridge_clients", "Connections registered with the hub (all transports).", nil, nil)
	descPendingCalls = prometheus.NewDesc("agentbridge_pending_calls", "Client requests awaiting the agent's answer.", nil, nil)
	descPendingReqs  = prometheus.NewDesc("agentbridge_pending_agent_requests", "Agent requests awaiting a client's answer.", nil, nil)
	descAgentUp      = prometheus.NewDesc("agentbridge_agent_up", "1 while the agent process runs.", nil, nil)
	descRestarts     = prometheus.NewDesc("agentbridge_agent_restarts_total", "Agent restarts after an exit or crash.", nil, nil)
	descClientMsgs   = prometheus.NewDesc("agentbridge_hub_client_messages_total", "Messages the hub received from clients.", nil, nil)
	descAgentMsgs    = prometheus.NewDesc("agentbridge_hub_agent_messages_total", "Messages the hub received from the agent.", nil, nil)
	descDeliveries   = prometheus.NewDesc("agentbridge_hub_deliveries_total", "Messages the hub queued to connections, per recipient.", nil, nil)
	descErrors       = prometheus.NewDesc("agentbridge_hub_errors_total", "Error responses the bridge produced itself.", nil, nil)
	descDenied       = prometheus.NewDesc("agentbridge_hub_denied_total", "Messages refused by role (-32001).", nil, nil)
	descEvicted      = prometheus.NewDesc("agentbridge_sessions_evicted_total", "Sessions only the agent named, forgotten past --max-sessions (oldest idle first).", nil, nil)
	descTimedOut     = prometheus.NewDesc("agentbridge_calls_timed_out_total", "Client requests answered -32005 because the agent did not answer within --call-timeout.", nil, nil)
	descLagged       = prometheus.NewDesc("agentbridge_hub_lagged_total", "Times a connection fell behind (onSlow catchup) and was fed from the session log instead.", nil, nil)
	descReplayBytes  = prometheus.NewDesc("agentbridge_replay_bytes", "Bytes all session logs hold (bounded by --replay-memory).", nil, nil)
)

func (hc *hubCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descSessions, descClients, descPendingCalls, descPendingReqs, descAgentUp, descRestarts, descClientMsgs, descAgentMsgs, descDeliveries, descErrors, descDenied, descEvicted, descTimedOut, descLagged, descReplayBytes} {
		ch <- d
	}
}

func (hc *hubCollector) Collect(ch chan<- prometheus.Metric) {
	st := hc.h.Stats()
	up := 0.0
	if st.AgentUp {
		up = 1
	}
	gauge := func(d *prometheus.Desc, v float64) { ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v) }
	counter := func(d *prometheus.Desc, v uint64) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v))
	}
	gauge(descSessions, float64(st.Sessions))
	gauge(descClients, float64(st.Connections))
	gauge(descPendingCalls, float64(st.PendingCalls))
	gauge(descPendingReqs, float64(st.PendingRequests))
	gauge(descAgentUp, up)
	counter(descRestarts, st.AgentRestarts)
	counter(descClientMsgs, st.ClientMessages)
	counter(descAgentMsgs, st.AgentMessages)
	counter(descDeliveries, st.Deliveries)
	counter(descErrors, st.Errors)
	counter(descDenied, st.Denied)
	counter(descEvicted, st.SessionsEvicted)
	counter(descTimedOut, st.CallsTimedOut)
	counter(descLagged, st.Lagged)
	gauge(descReplayBytes, float64(st.ReplayBytes))
}

// tlsMetrics adapts the transport metrics to tlsserve.Metrics.
type tlsMetrics struct {
	m *Metrics
	x *httpMetrics
}

var _ tlsserve.Metrics = tlsMetrics{}

func (t tlsMetrics) Opened(tr string)               { t.m.opened(tr) }
func (t tlsMetrics) ClosedConn(tr string)           { t.m.closedConn(tr) }
func (t tlsMetrics) In(tr string, bytes int)        { t.m.in(tr, bytes) }
func (t tlsMetrics) Out(tr string, msgs, bytes int) { t.m.out(tr, msgs, bytes) }
func (t tlsMetrics) Closed(tr, reason string)       { t.m.closed(tr, reason) }
func (t tlsMetrics) ProtocolError(code uint16)      { t.m.protocolError(code) }
func (t tlsMetrics) HalfOpen(tr string)             { t.x.halfOpen.WithLabelValues(tr).Inc() }
func (t tlsMetrics) RateLimited(kind string)        { t.m.rateLimited(kind) }
