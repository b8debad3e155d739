package bench

import (
	"fmt"
	"math"
	"path/filepath"
	"slices"
	"strconv"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/plotutil"
	"gonum.org/v1/plot/vg"
)

// WritePlots draws the comparison as PNGs in dir and returns their paths:
// for every operation, its latency distribution (latency against
// percentile, on HdrHistogram's "nines" scale) for each system and round;
// and the throughput of every run, second by second.
func WritePlots(r *CompareReport, dir string) ([]string, error) {
	var files []string
	var ops []string
	for _, run := range r.Runs {
		for _, o := range run.Report.Ops {
			if !slices.Contains(ops, o.Op) {
				ops = append(ops, o.Op)
			}
		}
	}
	for _, op := range ops {
		p := plot.New()
		title := r.Workload + " " + op
		if op == r.Workload {
			title = op
		}
		p.Title.Text = fmt.Sprintf("%s latency, %d-node clusters, %d clients", title, r.Nodes, r.Clients)
		p.X.Label.Text = "percentile"
		p.Y.Label.Text = "latency (ms)"
		p.X.Tick.Marker = ninesTicks{}
		p.Legend.Top, p.Legend.Left = true, true
		var lines []any
		for _, run := range r.Runs {
			for _, o := range run.Report.Ops {
				if o.Op != op || len(o.Distribution) == 0 {
					continue
				}
				var xys plotter.XYs
				for _, q := range o.Distribution {
					if q.Percent >= 100 {
						continue
					}
					xys = append(xys, plotter.XY{X: nines(q.Percent), Y: q.Ms})
				}
				lines = append(lines, fmt.Sprintf("%s round %d", run.System, run.Round), xys)
			}
		}
		if len(lines) == 0 {
			continue
		}
		if err := plotutil.AddLinePoints(p, lines...); err != nil {
			return files, err
		}
		p.X.Max += 0.25 // room for the last tick's label
		p.Y.Min = 0
		f := filepath.Join(dir, fmt.Sprintf("%s-%s-latency.png", r.Workload, op))
		if err := p.Save(8*vg.Inch, 5*vg.Inch, f); err != nil {
			return files, err
		}
		files = append(files, f)
	}

	p := plot.New()
	p.Title.Text = fmt.Sprintf("%s throughput, %d-node clusters, %d clients", r.Workload, r.Nodes, r.Clients)
	p.X.Label.Text = "second of the run"
	p.Y.Label.Text = "operations per second (all kinds)"
	p.Legend.Top = true
	var lines []any
	for _, run := range r.Runs {
		var per []int64
		for _, o := range run.Report.Ops {
			if o.Op == "watch" {
				continue // deliveries, not requests
			}
			for i, n := range o.PerSecond {
				for len(per) <= i {
					per = append(per, 0)
				}
				per[i] += n
			}
		}
		if len(per) > 1 {
			per = per[:len(per)-1] // the last second is partial
		}
		var xys plotter.XYs
		for i, n := range per {
			xys = append(xys, plotter.XY{X: float64(i), Y: float64(n)})
		}
		if len(xys) > 0 {
			lines = append(lines, fmt.Sprintf("%s round %d", run.System, run.Round), xys)
		}
	}
	if len(lines) > 0 {
		if err := plotutil.AddLines(p, lines...); err != nil {
			return files, err
		}
		p.Y.Min = 0
		f := filepath.Join(dir, r.Workload+"-throughput.png")
		if err := p.Save(8*vg.Inch, 5*vg.Inch, f); err != nil {
			return files, err
		}
		files = append(files, f)
	}
	return files, nil
}

// nines maps a percentile to HdrHistogram's axis: 90 → 1, 99 → 2, 99.9 → 3.
func nines(percent float64) float64 { return -math.Log10(1 - percent/100) }

// ninesTicks labels the nines axis at 0, 90, 99, 99.9, ... percent.
type ninesTicks struct{}

// Ticks returns a tick per whole nine within [min, max].
func (ninesTicks) Ticks(lo, hi float64) []plot.Tick {
	var ticks []plot.Tick
	for n := math.Floor(lo); n <= math.Ceil(hi); n++ {
		label := strconv.FormatFloat(100*(1-math.Pow(10, -n)), 'f', -1, 64) + "%"
		ticks = append(ticks, plot.Tick{Value: n, Label: label})
	}
	return ticks
}
