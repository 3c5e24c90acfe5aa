package loop

import (
	"log/slog"
	"sync"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/agentbridge/agentbridge/breaker"
	"github.com/agentbridge/agentbridge/delivery"
	"github.com/agentbridge/agentbridge/wire"
)

// Metrics are the transport's Prometheus collectors. Every method is safe
// from any goroutine.
type Metrics struct {
	Registry    *prometheus.Registry
	connsTotal  *prometheus.CounterVec
	connsOpen   *prometheus.GaugeVec
	msgsIn      *prometheus.CounterVec
	bytesIn     *prometheus.CounterVec
	msgsOut     *prometheus.CounterVec
	bytesOut    *prometheus.CounterVec
	refusals    *prometheus.CounterVec
	closes      *prometheus.CounterVec
	httpReqs    *prometheus.CounterVec
	wsProtoErrs *prometheus.CounterVec
	bp          bpMetrics
	// traffic holds each transport's traffic counters, resolved once: a
	// label lookup per message cost ~5% of the daemon's CPU under load.
	trafficOf sync.Map // transport -> *trafficCounters
}

type trafficCounters struct {
	msgsIn, bytesIn, msgsOut, bytesOut prometheus.Counter
}

func (m *Metrics) traffic(t string) *trafficCounters {
	if tc, ok := m.trafficOf.Load(t); ok {
		return tc.(*trafficCounters)
	}
	tc := &trafficCounters{
		msgsIn: m.msgsIn.WithLabelValues(t), bytesIn: m.bytesIn.WithLabelValues(t),
		msgsOut: m.msgsOut.WithLabelValues(t), bytesOut: m.bytesOut.WithLabelValues(t),
	}
	v, _ := m.trafficOf.LoadOrStore(t, tc)
	return v.(*trafficCounters)
}

// bpMetrics are the backpressure collectors: what each connection's outbox
// and input limiter did.
type bpMetrics struct {
	queueDepth  prometheus.Histogram
	queueBytes  prometheus.Histogram
	lost        *prometheus.CounterVec
	transitions *prometheus.CounterVec
	degraded    prometheus.Gauge
	closes      *prometheus.CounterVec
	summaries   prometheus.Counter
	gaps        prometheus.Counter
	rateLimited *prometheus.CounterVec
}

func newBPMetrics() bpMetrics {
	return bpMetrics{
		queueDepth: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "agentbridge_queue_depth_messages",
			Help:    "Entries in a connection's outbound queue (tombstones included), sampled at each drain.",
			Buckets: []float64{0, 1, 4, 16, 64, 256, 1024, 4096, 16384, 65536}}),
		queueBytes: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "agentbridge_queue_bytes",
			Help:    "Live data-plane bytes in a connection's outbound queue, sampled at each drain.",
			Buckets: prometheus.ExponentialBuckets(1024, 4, 10)}),
		lost: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "agentbridge_evictions_total",
			Help: "Data-plane events a connection did not get, by reason (ceiling, too_large, full, purged, degraded); each is named by a bridge/gap when it has a seq."}, []string{"reason"}),
		transitions: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "agentbridge_breaker_transitions_total",
			Help: "Consumer breaker state changes, by from and to state."}, []string{"from", "to"}),
		degraded: prometheus.NewGauge(prometheus.GaugeOpts{Name: "agentbridge_degraded_connections",
			Help: "Connections getting bridge/summary instead of the data plane now."}),
		closes: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "agentbridge_backpressure_closes_total",
			Help: "Connections closed by backpressure, by reason: control_ceiling (control did not fit), slow_consumer (onSlow=disconnect), flood (input far over its rate)."}, []string{"reason"}),
		summaries: prometheus.NewCounter(prometheus.CounterOpts{Name: "agentbridge_summaries_sent_total",
			Help: "bridge/summary notifications queued to degraded connections."}),
		gaps: prometheus.NewCounter(prometheus.CounterOpts{Name: "agentbridge_gaps_sent_total",
			Help: "bridge/gap notifications queued for events a connection did not get."}),
		rateLimited: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "agentbridge_rate_limited_total",
			Help: "Client messages refused by the input rate limit, by kind (request: answered -32004; notification: dropped)."}, []string{"kind"}),
	}
}

func (b *bpMetrics) collectors() []prometheus.Collector {
	return []prometheus.Collector{b.queueDepth, b.queueBytes, b.lost, b.transitions, b.degraded, b.closes, b.summaries, b.gaps, b.rateLimited}
}

// outboxMetrics adapts Metrics to delivery.Metrics for one connection, so
// that breaker transitions and degrades are logged with the peer.
type outboxMetrics struct {
	m    *bpMetrics
	log  *slog.Logger
	peer func() string // read when logging: the peer may be set after the outbox is made
}

var _ delivery.Metrics = outboxMetrics{}

// outbox returns the delivery.Metrics of one connection.
func (m *Metrics) outbox(log *slog.Logger, peer func() string) delivery.Metrics {
	return outboxMetrics{m: &m.bp, log: log, peer: peer}
}

func (o outboxMetrics) Lost(reason string, n uint64) {
	o.m.lost.WithLabelValues(reason).Add(float64(n))
}

func (o outboxMetrics) Transition(from, to breaker.State) {
	o.m.transitions.WithLabelValues(from.String(), to.String()).Inc()
	o.log.Debug("consumer breaker", "peer", o.peer(), "from", from.String(), "to", to.String())
}

func (o outboxMetrics) Degraded(on bool) {
	if on {
		o.m.degraded.Inc()
	} else {
		o.m.degraded.Dec()
	}
	o.log.Debug("delivery", "peer", o.peer(), "degraded", on)
}

func (o outboxMetrics) Summary() { o.m.summaries.Inc() }
func (o outboxMetrics) Gap()     { o.m.gaps.Inc() }

func (o outboxMetrics) Closed(r wire.CloseReason) { o.m.closes.WithLabelValues(r.String()).Inc() }

func (o outboxMetrics) Queue(items, dataBytes int) {
	o.m.queueDepth.Observe(float64(items))
	o.m.queueBytes.Observe(float64(dataBytes))
}

func (m *Metrics) rateLimited(kind string) { m.bp.rateLimited.WithLabelValues(kind).Inc() }

// closedFor counts a close the bridge initiated (agentbridge_closes_total);
// a flood is a backpressure close too.
func (m *Metrics) closedFor(t string, r wire.CloseReason) {
	m.closes.WithLabelValues(t, r.String()).Inc()
	if r == wire.CloseFlood {
		m.bp.closes.WithLabelValues(r.String()).Inc()
	}
}

// NewMetrics registers the transport metrics on reg (a fresh registry when nil).
func NewMetrics(reg *prometheus.Registry) *Metrics {
	if reg == nil {
		reg = prometheus.NewRegistry()
	}
	m := &Metrics{
		Registry:    reg,
		connsTotal:  prometheus.NewCounterVec(prometheus.CounterOpts{Name: "agentbridge_connections_total", Help: "Connections accepted, by transport."}, []string{"transport"}),
		connsOpen:   prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "agentbridge_connections_open", Help: "Connections open now, by transport."}, []string{"transport"}),
		msgsIn:      prometheus.NewCounterVec(prometheus.CounterOpts{Name: "agentbridge_messages_in_total", Help: "Messages received from clients, by transport."}, []string{"transport"}),
		bytesIn:     prometheus.NewCounterVec(prometheus.CounterOpts{Name: "agentbridge_bytes_in_total", Help: "Message bytes received from clients, by transport."}, []string{"transport"}),
		msgsOut:     prometheus.NewCounterVec(prometheus.CounterOpts{Name: "agentbridge_messages_out_total", Help: "Messages written to clients, by transport."}, []string{"transport"}),
		bytesOut:    prometheus.NewCounterVec(prometheus.CounterOpts{Name: "agentbridge_bytes_out_total", Help: "Bytes written to clients (framing included), by transport."}, []string{"transport"}),
		refusals:    prometheus.NewCounterVec(prometheus.CounterOpts{Name: "agentbridge_refused_total", Help: "Connections or requests refused before routing, by transport and reason."}, []string{"transport", "reason"}),
		closes:      prometheus.NewCounterVec(prometheus.CounterOpts{Name: "agentbridge_closes_total", Help: "Connections closed by the bridge, by transport and reason."}, []string{"transport", "reason"}),
		httpReqs:    prometheus.NewCounterVec(prometheus.CounterOpts{Name: "agentbridge_http_requests_total", Help: "HTTP requests, by path class and status."}, []string{"path", "status"}),
		wsProtoErrs: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "agentbridge_ws_protocol_errors_total", Help: "WebSocket protocol errors, by close code."}, []string{"code"}),
	}
	reg.MustRegister(m.connsTotal, m.connsOpen, m.msgsIn, m.bytesIn, m.msgsOut, m.bytesOut, m.refusals, m.closes, m.httpReqs, m.wsProtoErrs)
	m.bp = newBPMetrics()
	reg.MustRegister(m.bp.collectors()...)
	// go_* (goroutines, heap, GC) and process_* (RSS, open fds against
	// their limit, CPU): what an operator watches when a flood or a leak is
	// suspected. Registered once per registry (tests share one).
	register(reg, collectors.NewGoCollector())
	register(reg, collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// CounterFunc exports a monotonic count read at scrape time (the store's
// and the audit log's dropped writes, for instance). f must be safe from
// any goroutine and must not block. Safe from any goroutine.
func (m *Metrics) CounterFunc(name, help string, f func() float64) {
	register(m.Registry, prometheus.NewCounterFunc(prometheus.CounterOpts{Name: name, Help: help}, f))
}

// GaugeFunc exports a value read at scrape time, like CounterFunc.
func (m *Metrics) GaugeFunc(name, help string, f func() float64) {
	register(m.Registry, prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: name, Help: help}, f))
}

func (m *Metrics) opened(t string) {
	m.connsTotal.WithLabelValues(t).Inc()
	m.connsOpen.WithLabelValues(t).Inc()
}

func (m *Metrics) closedConn(t string) { m.connsOpen.WithLabelValues(t).Dec() }

func (m *Metrics) in(t string, bytes int) {
	tc := m.traffic(t)
	tc.msgsIn.Inc()
	tc.bytesIn.Add(float64(bytes))
}

func (m *Metrics) out(t string, msgs, bytes int) {
	tc := m.traffic(t)
	tc.msgsOut.Add(float64(msgs))
	tc.bytesOut.Add(float64(bytes))
}

func (m *Metrics) refused(t, reason string) { m.refusals.WithLabelValues(t, reason).Inc() }

// closed counts a bridge-initiated close; reason must be a short class, not
// free text, to keep label cardinality bounded.
func (m *Metrics) closed(t, reason string) {
	if len(reason) > 40 {
		reason = reason[:40]
	}
	m.closes.WithLabelValues(t, reason).Inc()
}
