package bench

import (
	"fmt"
	"image/color"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
	"gonum.org/v1/plot/vg/vgimg"
	"gonum.org/v1/plot/vg/vgsvg"
)

// seriesColor keeps one color per system across every panel.
var seriesColor = map[string]color.Color{
	sysBridge:     color.RGBA{R: 0x1f, G: 0x5f, B: 0xbf, A: 0xff},
	sysDirect:     color.RGBA{R: 0x55, G: 0x55, B: 0x55, A: 0xff},
	sysUDSEcho:    color.RGBA{R: 0xaa, G: 0xaa, B: 0xaa, A: 0xff},
	sysGWS:        color.RGBA{R: 0xf0, G: 0x8c, B: 0x1e, A: 0xff},
	sysWebsocketd: color.RGBA{R: 0xc8, G: 0x28, B: 0x28, A: 0xff},
	sysBroadcast:  color.RGBA{R: 0x2e, G: 0x9e, B: 0x4a, A: 0xff},
}

var stallShades = []color.Color{
	color.RGBA{R: 0x1f, G: 0x5f, B: 0xbf, A: 0xff},
	color.RGBA{R: 0x6f, G: 0x9f, B: 0xe0, A: 0xff},
	color.RGBA{R: 0xb0, G: 0xcc, B: 0xf2, A: 0xff},
	color.RGBA{R: 0xd8, G: 0xe6, B: 0xfa, A: 0xff},
}

// writePlot charts a result against its baselines: round-trip latency,
// throughput, fan-out, idle memory and stall isolation, one panel each,
// as SVG or PNG by the file's extension.
func writePlot(res *Result, file string) error {
	var panels []*plot.Plot
	add := func(p *plot.Plot, err error) error {
		if err != nil {
			return err
		}
		if p != nil {
			panels = append(panels, p)
		}
		return nil
	}
	find := func(scenario, transport, kase, system string) *Measurement {
		for i := range res.Runs {
			m := &res.Runs[i]
			if m.Scenario == scenario && m.Transport == transport && m.Case == kase && m.System == system {
				return m
			}
		}
		return nil
	}
	systems := []string{sysBridge, sysDirect, sysUDSEcho, sysGWS, sysWebsocketd, sysBroadcast}

	// Round trip, closed loop, unpinned and pinned.
	var cats []string
	for _, t := range Transports {
		if find("rtt", t, "closed loop", sysBridge) != nil {
			cats = append(cats, t+"\np50", t+"\np99")
		}
		if find("rtt", t, "closed loop pinned", sysBridge) != nil {
			cats = append(cats, t+"\np50 pin", t+"\np99 pin")
		}
	}
	if err := add(groupedBars("Round trip, one request in flight", "µs (lower is better)", cats, systems, nil, func(sys, cat string) float64 {
		f := strings.Fields(cat) // transport, quantile[, "pin"]
		kase := "closed loop"
		if len(f) == 3 {
			kase += " pinned"
		}
		m := find("rtt", f[0], kase, sys)
		if m == nil || m.Latency == nil {
			return 0
		}
		if f[1] == "p50" {
			return m.Latency.P50
		}
		return m.Latency.P99
	})); err != nil {
		return err
	}
	cats = nil

	// Throughput: the cases as they ran.
	cats = cats[:0]
	for _, m := range res.Runs {
		if c := m.Transport + " " + m.Case; m.Scenario == "throughput" && !slices.Contains(cats, c) {
			cats = append(cats, c)
		}
	}
	// uds-echo, the raw floor, is in the table: at ~10× everything else
	// it would flatten the bars that are compared.
	tpSystems := slices.DeleteFunc(slices.Clone(systems), func(s string) bool { return s == sysUDSEcho })
	if err := add(groupedBars("Pipelined throughput", "answered msgs/s (higher is better)", cats, tpSystems, nil, func(sys, cat string) float64 {
		t, k, _ := strings.Cut(cat, " ")
		if m := find("throughput", t, k, sys); m != nil {
			return m.Rate
		}
		return 0
	})); err != nil {
		return err
	}

	// Fan-out and idle memory: one value per transport.
	perTransport := func(scenario string, v func(*Measurement) float64) func(sys, cat string) float64 {
		return func(sys, t string) float64 {
			for i := range res.Runs {
				m := &res.Runs[i]
				if m.Scenario == scenario && m.Transport == t && m.System == sys {
					return v(m)
				}
			}
			return 0
		}
	}
	if err := add(groupedBars("Fan-out: delivered to all clients", "msgs/s (higher is better)", Transports, systems, nil,
		perTransport("fanout", func(m *Measurement) float64 { return m.Rate }))); err != nil {
		return err
	}
	if err := add(groupedBars("Idle connections: server RSS", "KB per connection (lower is better)", Transports, systems, nil,
		perTransport("idle", func(m *Measurement) float64 { return m.PerConnKB }))); err != nil {
		return err
	}

	// Stall isolation: the fast clients' latency per stalled count.
	var counts []string
	for _, m := range res.Runs {
		if m.Scenario == "stall" && !slices.Contains(counts, m.Case) {
			counts = append(counts, m.Case)
		}
	}
	shades := map[string]color.Color{}
	for i, c := range counts {
		shades[c] = stallShades[min(i, len(stallShades)-1)]
	}
	cats = cats[:0]
	for _, t := range Transports {
		cats = append(cats, t+" p50", t+" p99")
	}
	if err := add(groupedBars("Stall isolation: fast clients' delivery latency", "µs (lower is better)", cats, counts, shades, func(kase, cat string) float64 {
		t, q, _ := strings.Cut(cat, " ")
		m := find("stall", t, kase, sysBridge)
		if m == nil || m.Latency == nil {
			return 0
		}
		if q == "p50" {
			return m.Latency.P50
		}
		return m.Latency.P99
	})); err != nil {
		return err
	}

	if len(panels) == 0 {
		return errNothingToPlot
	}
	cols := min(2, len(panels))
	rows := (len(panels) + cols - 1) / cols
	grid := make([][]*plot.Plot, rows)
	for i := range grid {
		grid[i] = make([]*plot.Plot, cols)
		for j := range cols {
			if k := i*cols + j; k < len(panels) {
				grid[i][j] = panels[k]
			}
		}
	}
	w, h := vg.Length(cols)*6*vg.Inch, vg.Length(rows)*4*vg.Inch
	var c vg.CanvasWriterTo
	switch strings.ToLower(filepath.Ext(file)) {
	case ".svg":
		c = vgsvg.New(w, h)
	case ".png":
		c = vgimg.PngCanvas{Canvas: vgimg.NewWith(vgimg.UseWH(w, h), vgimg.UseDPI(110), vgimg.UseBackgroundColor(color.White))}
	default:
		return fmt.Errorf("unknown chart format %q (want .svg or .png)", filepath.Ext(file))
	}
	dc := draw.New(c)
	tiles := draw.Tiles{Rows: rows, Cols: cols, PadX: vg.Inch / 3, PadY: vg.Inch / 3, PadTop: vg.Inch / 6, PadBottom: vg.Inch / 6, PadLeft: vg.Inch / 6, PadRight: vg.Inch / 6}
	canvases := plot.Align(grid, tiles, dc)
	for i := range grid {
		for j, p := range grid[i] {
			if p != nil {
				p.Draw(canvases[i][j])
			}
		}
	}
	f, err := os.Create(file)
	if err != nil {
		return err
	}
	if _, err := c.WriteTo(f); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// groupedBars draws one bar per series in each category; a series with no
// value anywhere is left out, and so is a panel with no value at all.
func groupedBars(title, ylabel string, cats, series []string, colors map[string]color.Color, val func(series, cat string) float64) (*plot.Plot, error) {
	if colors == nil {
		colors = seriesColor
	}
	var present []string
	for _, s := range series {
		for _, c := range cats {
			if val(s, c) > 0 {
				present = append(present, s)
				break
			}
		}
	}
	if len(present) == 0 || len(cats) == 0 {
		return nil, nil
	}
	p := plot.New()
	p.Title.Text = title
	p.Y.Label.Text = ylabel
	p.Y.Min = 0
	p.Legend.Top = true
	p.Legend.Left = true
	// NominalX puts categories one unit apart on a panel about 340 pt
	// wide: the bars of one category share most of that unit.
	width := vg.Points(min(40, 0.8*340/float64(len(cats)*len(present))))
	for i, s := range present {
		vs := make(plotter.Values, len(cats))
		for j, c := range cats {
			vs[j] = val(s, c)
		}
		bc, err := plotter.NewBarChart(vs, width)
		if err != nil {
			return nil, err
		}
		bc.Color = colors[s]
		bc.LineStyle.Width = 0
		bc.Offset = vg.Length(float64(i)-float64(len(present)-1)/2) * width
		p.Add(bc)
		p.Legend.Add(s, bc)
	}
	p.NominalX(cats...)
	p.Y.Tick.Marker = humanTicks{}
	// Room above the tallest bar for the legend.
	p.Y.Max *= 1.15 + 0.08*float64(len(present))
	return p, nil
}

// humanTicks labels an axis 1.5M, 200k, 40 rather than 1.5e+06.
type humanTicks struct{}

func (humanTicks) Ticks(lo, hi float64) []plot.Tick {
	ticks := plot.DefaultTicks{}.Ticks(lo, hi)
	for i := range ticks {
		if ticks[i].Label == "" {
			continue
		}
		switch v := ticks[i].Value; {
		case v >= 1e6:
			ticks[i].Label = strconv.FormatFloat(v/1e6, 'f', -1, 64) + "M"
		case v >= 1e3:
			ticks[i].Label = strconv.FormatFloat(v/1e3, 'f', -1, 64) + "k"
		default:
			ticks[i].Label = strconv.FormatFloat(v, 'f', -1, 64)
		}
	}
	return ticks
}
