package loop

import (
	"errors"
	"log/slog"
	"net/http"
	"strconv"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/agentbridge/agentbridge/delivery"
	"github.com/agentbridge/agentbridge/httpfront"
	"github.com/agentbridge/agentbridge/session"
)

// httpMetrics are the collectors the HTTP listeners add to the transport's
// registry: half-open drops.
type httpMetrics struct {
	halfOpen *prometheus.CounterVec
}

func newHTTPMetrics(reg *prometheus.Registry) *httpMetrics {
	x := &httpMetrics{
		halfOpen: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "agentbridge_half_open_total", Help: "WebSocket peers dropped after two heartbeats without a frame, by transport."}, []string{"transport"}),
	}
	x.halfOpen = register(reg, x.halfOpen)
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
	descCatchingUp   = prometheus.NewDesc("agentbridge_connections_catching_up", "Connections fed from the session log instead of live delivery: catchup connections that fell behind or stopped reading, and replays.", nil, nil)
	descReplayBytes  = prometheus.NewDesc("agentbridge_replay_bytes", "Bytes all session logs hold (bounded by --replay-memory).", nil, nil)
)

func (hc *hubCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descSessions, descClients, descPendingCalls, descPendingReqs, descAgentUp, descRestarts, descClientMsgs, descAgentMsgs, descDeliveries, descErrors, descDenied, descEvicted, descTimedOut, descLagged, descCatchingUp, descReplayBytes} {
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
	gauge(descCatchingUp, float64(st.CatchingUp))
	gauge(descReplayBytes, float64(st.ReplayBytes))
}

// HTTPMetrics is m as the HTTP front (httpfront.Metrics) and the TLS
// listener (tlsserve.Metrics) report into: the same registry as the gnet
// listener's, so /metrics counts every listener. Safe from any goroutine.
type HTTPMetrics struct {
	m     *Metrics
	x     *httpMetrics
	log   *slog.Logger
	scrap http.Handler
}

var _ httpfront.Metrics = (*HTTPMetrics)(nil)

// HTTP makes m's HTTP side and exports hub's counters in m's registry (read
// once per scrape). Call it once per hub.
func (m *Metrics) HTTP(hub *session.Hub, log *slog.Logger) *HTTPMetrics {
	register(m.Registry, prometheus.Collector(&hubCollector{h: hub}))
	if log == nil {
		log = slog.Default()
	}
	return &HTTPMetrics{m: m, x: newHTTPMetrics(m.Registry), log: log,
		scrap: promhttp.HandlerFor(m.Registry, promhttp.HandlerOpts{ErrorHandling: promhttp.ContinueOnError, DisableCompression: true})}
}

// Scrape serves the registry in the Prometheus text format (the body of
// GET /metrics).
func (h *HTTPMetrics) Scrape() http.Handler { return h.scrap }

// Endpoint is what the connections of the front and of the TLS listener
// share: the hub, outbox policy, rate, and the close and rate-limit
// counters.
func (h *HTTPMetrics) Endpoint(hub *session.Hub, out delivery.Config, rate delivery.Rate) delivery.EndpointConfig {
	return delivery.EndpointConfig{Hub: hub, Outbox: out, Rate: rate, Logger: h.log,
		Closed: h.m.closedFor, RateLimited: h.m.rateLimited}
}

func (h *HTTPMetrics) Request(path string, status int) { h.m.request(path, status) }
func (h *HTTPMetrics) Refused(tr, reason string)       { h.m.refused(tr, reason) }
func (h *HTTPMetrics) Opened(tr string)                { h.m.opened(tr) }
func (h *HTTPMetrics) ClosedConn(tr string)            { h.m.closedConn(tr) }
func (h *HTTPMetrics) In(tr string, bytes int)         { h.m.in(tr, bytes) }
func (h *HTTPMetrics) Out(tr string, msgs, bytes int)  { h.m.out(tr, msgs, bytes) }
func (h *HTTPMetrics) Closed(tr, reason string)        { h.m.closed(tr, reason) }
func (h *HTTPMetrics) ProtocolError(code uint16)       { h.m.protocolError(code) }
func (h *HTTPMetrics) HalfOpen(tr string)              { h.x.halfOpen.WithLabelValues(tr).Inc() }
func (h *HTTPMetrics) RateLimited(kind string)         { h.m.rateLimited(kind) }
func (h *HTTPMetrics) Outbox(peer string) delivery.Metrics {
	return h.m.outbox(h.log, func() string { return peer })
}
