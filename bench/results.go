package bench

import (
	"fmt"
	"io"
	"maps"
	"math"
	"slices"
	"strings"
	"text/tabwriter"
	"time"
)

// Result is everything one `agentbridge bench` run measured: what --json
// writes and --history keeps.
type Result struct {
	Schema  int       `json:"schema"`
	Started time.Time `json:"started"`
	Seconds float64   `json:"seconds"`
	// Command reproduces the run.
	Command string        `json:"command"`
	Machine Machine       `json:"machine"`
	Options Options       `json:"options"`
	Runs    []Measurement `json:"runs"`
	Figures []Figure      `json:"figures"`
	// Skipped lists baselines or cases that could not run, and why.
	Skipped []string `json:"skipped,omitempty"`
	// Failed lists scenario failures; a failed scenario has no figures.
	Failed []string `json:"failed,omitempty"`
	// ScenarioSeconds is the wall time of each scenario, setup included.
	ScenarioSeconds map[string]float64 `json:"scenarioSeconds"`
}

// Measurement is one measurement of one system: the raw numbers figures come from.
type Measurement struct {
	Scenario  string `json:"scenario"`
	Transport string `json:"transport"`
	Case      string `json:"case"`
	System    string `json:"system"`
	// Conns is the client connections the run used.
	Conns int `json:"conns"`
	// Seconds is the measured time (warm-up excluded).
	Seconds float64 `json:"seconds"`
	// Count is the requests answered or messages delivered in Seconds.
	Count int64 `json:"count"`
	// Rate is Count / Seconds: answered requests or delivered messages.
	Rate float64 `json:"msgsPerSec,omitempty"`
	// Latency is round-trip (rtt) or delivery (fanout, stall) latency, or
	// time to live again (reconnect).
	Latency *Latency `json:"latencyUs,omitempty"`
	// RSS of the server process, before and after, and the growth per
	// connection (idle) — KiB.
	RSSBeforeKB int64   `json:"rssBeforeKB,omitempty"`
	RSSAfterKB  int64   `json:"rssAfterKB,omitempty"`
	PerConnKB   float64 `json:"perConnKB,omitempty"`
	// Delivery accounting (fanout, stall, reconnect).
	Delivered   int64   `json:"delivered,omitempty"`
	Dropped     int64   `json:"dropped,omitempty"`     // announced by bridge/gap
	Missing     int64   `json:"missing,omitempty"`     // neither delivered nor announced
	Lost        int64   `json:"lost"`                  // reconnect: holes in the seq stream
	Duplicated  int64   `json:"duplicated"`            // reconnect: seqs seen twice
	StormMs     float64 `json:"stormMs,omitempty"`     // reconnect: drop to all live
	ServerDrops int64   `json:"serverDrops,omitempty"` // connections the daemon closed
	// Round is which of --repeat rounds this is (1-based); 0 when the
	// scenario does not repeat.
	Round int    `json:"round,omitempty"`
	Note  string `json:"note,omitempty"`
}

// Figure is one line of the table: the bridge's value of a metric and the
// same metric of each baseline, measured in the same run.
type Figure struct {
	Scenario  string     `json:"scenario"`
	Transport string     `json:"transport"`
	Case      string     `json:"case"`
	Metric    string     `json:"metric"`
	Unit      string     `json:"unit"`
	Better    string     `json:"better"` // "lower" or "higher"
	Value     float64    `json:"value"`
	Baselines []Baseline `json:"baselines,omitempty"`
	// Target is an absolute goal for Value (fanout rate, idle KB, reconnect
	// losses); ratio goals sit on the baselines.
	Target *Target `json:"target,omitempty"`
}

// Baseline is one comparison: Ratio is Figure.Value ÷ Value, or, when the
// figure was measured in several rounds, the median of each round's
// bridge ÷ baseline (RoundRatios), while Figure.Value and Value are the
// medians of the rounds' values.
type Baseline struct {
	System      string    `json:"system"`
	Value       float64   `json:"value"`
	Ratio       float64   `json:"ratio"`
	RoundRatios []float64 `json:"roundRatios,omitempty"`
	Target      *Target   `json:"target,omitempty"`
}

// Target is a goal from the issue and whether this run met it.
type Target struct {
	Text string `json:"text"`
	Met  bool   `json:"met"`
}

// Key names a figure across runs, for the history. Pure: any goroutine.
func (f Figure) Key() string {
	return f.Scenario + "/" + f.Transport + "/" + f.Case + "/" + f.Metric
}

// ratioTarget is a goal on bridge ÷ baseline: at most or at least limit.
type ratioTarget struct {
	system string
	atMost bool
	limit  float64
}

// addFigure records the bridge's value with its baselines; a baseline with
// no positive value is left out (it did not run) rather than divided by.
func (r *runner) addFigure(f Figure, base map[string]float64, order []string, targets ...ratioTarget) {
	rs := newRounds()
	rs.add(0, sysBridge, f.Value)
	for sys, v := range base {
		rs.add(0, sys, v)
	}
	r.addRounds(f, rs, order, targets...)
}

// rounds is one metric over --repeat rounds: each round's value of the
// bridge and of each baseline. Owned by the scenario that fills it.
type rounds struct {
	bridge map[int]float64
	base   map[string]map[int]float64
}

func newRounds() *rounds {
	return &rounds{bridge: map[int]float64{}, base: map[string]map[int]float64{}}
}

// add records system's value in round; a value that is not positive (the
// system did not run) is left out.
func (rs *rounds) add(round int, system string, v float64) {
	if !(v > 0) || math.IsInf(v, 0) {
		return
	}
	if system == sysBridge {
		rs.bridge[round] = v
		return
	}
	if rs.base[system] == nil {
		rs.base[system] = map[int]float64{}
	}
	rs.base[system][round] = v
}

// addRounds records the median of the bridge's rounds as the figure and,
// for each baseline, the median of its rounds and the median of the
// per-round ratios (a round where either side failed has no ratio). The
// ratio is paired by round because drift on a shared machine moves both
// sides of a round together; one slow round then moves no median.
func (r *runner) addRounds(f Figure, rs *rounds, order []string, targets ...ratioTarget) {
	f.Value = median(slices.Collect(maps.Values(rs.bridge)))
	for _, sys := range order {
		vals := rs.base[sys]
		var ratios []float64
		for round, v := range vals {
			if bv, ok := rs.bridge[round]; ok {
				ratios = append(ratios, bv/v)
			}
		}
		if len(ratios) == 0 {
			continue
		}
		b := Baseline{System: sys, Value: median(slices.Collect(maps.Values(vals))), Ratio: median(ratios)}
		if len(rs.bridge) > 1 || len(vals) > 1 {
			slices.Sort(ratios)
			b.RoundRatios = ratios
		}
		for _, t := range targets {
			if t.system != sys {
				continue
			}
			if t.atMost {
				b.Target = &Target{Text: fmt.Sprintf("≤ %g×", t.limit), Met: b.Ratio <= t.limit}
			} else {
				b.Target = &Target{Text: fmt.Sprintf("≥ %g×", t.limit), Met: b.Ratio >= t.limit}
			}
		}
		f.Baselines = append(f.Baselines, b)
	}
	r.res.Figures = append(r.res.Figures, f)
}

// median of vs (the mean of the middle two for an even count); 0 for none.
// It sorts a copy.
func median(vs []float64) float64 {
	if len(vs) == 0 {
		return 0
	}
	s := slices.Sorted(slices.Values(vs))
	n := len(s)
	if n%2 == 1 {
		return s[n/2]
	}
	return (s[n/2-1] + s[n/2]) / 2
}

// rounds is how many rounds a measurement takes: --repeat when it is
// one whose ratio the targets judge, else one.
func (r *runner) rounds(repeated bool) int {
	if repeated {
		return r.o.Repeat
	}
	return 1
}

// formatValue prints a figure's value in its unit, with sensible precision.
func formatValue(v float64, unit string) string {
	switch unit {
	case "µs", "ms":
		if unit == "µs" && v >= 10_000 {
			return fmt.Sprintf("%.1f ms", v/1e3)
		}
		if v >= 100 {
			return fmt.Sprintf("%.0f %s", v, unit)
		}
		return fmt.Sprintf("%.1f %s", v, unit)
	case "msgs/s":
		switch {
		case v >= 1e6:
			return fmt.Sprintf("%.2fM/s", v/1e6)
		case v >= 1e3:
			return fmt.Sprintf("%.1fk/s", v/1e3)
		}
		return fmt.Sprintf("%.0f/s", v)
	case "KB":
		return fmt.Sprintf("%.2f KB", v)
	case "s":
		return fmt.Sprintf("%.2f s", v)
	case "MB":
		return fmt.Sprintf("%.1f MB", v)
	case "events":
		return fmt.Sprintf("%.0f", v)
	}
	return fmt.Sprintf("%g %s", v, unit)
}

func targetCell(t *Target) string {
	if t == nil {
		return ""
	}
	if t.Met {
		return t.Text + " ✓"
	}
	return t.Text + " ✗"
}

// tableRow is one printed row: a figure against one of its baselines.
type tableRow struct {
	scenario, transport, kase, metric, value, system, base, ratio, target string
}

func (res *Result) rows() []tableRow {
	var out []tableRow
	for _, f := range res.Figures {
		row := tableRow{f.Scenario, f.Transport, f.Case, f.Metric, formatValue(f.Value, f.Unit), "—", "", "", targetCell(f.Target)}
		if len(f.Baselines) == 0 {
			out = append(out, row)
			continue
		}
		for i, b := range f.Baselines {
			if i > 0 {
				row = tableRow{}
			}
			row.system, row.base = b.System, formatValue(b.Value, f.Unit)
			row.ratio = fmt.Sprintf("%.2f×", b.Ratio)
			if t := targetCell(b.Target); t != "" {
				row.target = strings.TrimSpace(row.target + " " + t)
			}
			out = append(out, row)
		}
	}
	return out
}

// WriteTable prints the figures as an aligned text table, then the skipped
// and failed lines. Any goroutine, while nothing modifies res.
func (res *Result) WriteTable(w io.Writer) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "SCENARIO\tTRANSPORT\tCASE\tMETRIC\tBRIDGE\tBASELINE\tBASELINE VALUE\tBRIDGE ÷ BASELINE\tTARGET")
	for _, r := range res.rows() {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", r.scenario, r.transport, r.kase, r.metric, r.value, r.system, r.base, r.ratio, r.target)
	}
	tw.Flush()
	for _, s := range res.Skipped {
		fmt.Fprintln(w, "skipped: "+s)
	}
	for _, s := range res.Failed {
		fmt.Fprintln(w, "FAILED: "+s)
	}
}
