// Package bench drives etcd-compatible endpoints (rangekv or etcd) with
// workloads and reports throughput, latency percentiles and server CPU:
// the engine of the rangekv-bench command. Each workload counts every
// request it sends, as a success or as an error grouped by message, so a
// report always accounts for all of them.
package bench

import (
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"slices"
	"sort"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	"github.com/HdrHistogram/hdrhistogram-go"
)

// Latencies are recorded in microseconds from 1 µs to 60 s with three
// significant digits (HdrHistogram), about 0.1% error.
const (
	histMinMicros = 1
	histMaxMicros = 60_000_000
	histSigFigs   = 3
)

// Recorder collects the outcomes of one operation kind from many
// goroutines. The zero value is not usable; see NewRecorder.
type Recorder struct {
	mu     sync.Mutex
	start  time.Time
	hist   *hdrhistogram.Histogram
	ok     int64
	errors map[string]int64
	// perSecond counts successes in each second since start.
	perSecond []int64
	// clamped counts latencies outside the histogram's range, recorded
	// at its bounds.
	clamped int64
}

// NewRecorder returns an empty recorder.
func NewRecorder() *Recorder {
	return &Recorder{start: time.Now(), hist: hdrhistogram.New(histMinMicros, histMaxMicros, histSigFigs), errors: map[string]int64{}}
}

// Observe records one request: its latency when err is nil, else its
// error (grouped by message).
func (r *Recorder) Observe(latency time.Duration, err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if err != nil {
		r.errors[err.Error()]++
		return
	}
	r.ok++
	sec := int(time.Since(r.start) / time.Second)
	for len(r.perSecond) <= sec {
		r.perSecond = append(r.perSecond, 0)
	}
	r.perSecond[sec]++
	us := latency.Microseconds()
	if us < histMinMicros || us > histMaxMicros {
		r.clamped++
		us = min(max(us, histMinMicros), histMaxMicros)
	}
	_ = r.hist.RecordValue(us)
}

// Count returns the requests recorded: successes plus errors.
func (r *Recorder) Count() int64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := r.ok
	for _, c := range r.errors {
		n += c
	}
	return n
}

// OpReport is the summary of one operation kind. Latencies are in
// milliseconds.
type OpReport struct {
	Op         string           `json:"op"`
	Requests   int64            `json:"requests"`
	Errors     int64            `json:"errors"`
	ErrorsBy   map[string]int64 `json:"errors_by_message,omitempty"`
	Throughput float64          `json:"throughput_per_sec"`
	MeanMs     float64          `json:"mean_ms"`
	P50Ms      float64          `json:"p50_ms"`
	P90Ms      float64          `json:"p90_ms"`
	P99Ms      float64          `json:"p99_ms"`
	P999Ms     float64          `json:"p999_ms"`
	MaxMs      float64          `json:"max_ms"`
	// Clamped counts latencies outside 1 µs..60 s, recorded at the bound.
	Clamped int64 `json:"clamped,omitempty"`
	// Distribution is the latency at DistributionQuantiles, for plots.
	Distribution []Quantile `json:"distribution,omitempty"`
	// PerSecond counts the successes completed in each second of the run.
	PerSecond []int64 `json:"per_second,omitempty"`
}

// Quantile is the latency (ms) at or below which Percent of requests
// completed.
type Quantile struct {
	Percent float64 `json:"percent"`
	Ms      float64 `json:"ms"`
}

// DistributionQuantiles are the percentiles an OpReport's Distribution
// gives: a latency-distribution curve in HdrHistogram's manner.
var DistributionQuantiles = []float64{0, 10, 25, 50, 75, 90, 95, 99, 99.5, 99.9, 99.95, 99.99, 100}

// Summarize reports the recorder's contents for a run of the given
// length: throughput counts successful requests per second.
func (r *Recorder) Summarize(op string, elapsed time.Duration) OpReport {
	r.mu.Lock()
	defer r.mu.Unlock()
	ms := func(us int64) float64 { return float64(us) / 1000 }
	rep := OpReport{Op: op, Requests: r.ok, Clamped: r.clamped}
	for _, c := range r.errors {
		rep.Errors += c
	}
	rep.Requests += rep.Errors
	if len(r.errors) > 0 {
		rep.ErrorsBy = maps.Clone(r.errors)
	}
	if elapsed > 0 {
		rep.Throughput = float64(r.ok) / elapsed.Seconds()
	}
	if r.ok > 0 {
		rep.MeanMs = r.hist.Mean() / 1000
		rep.P50Ms = ms(r.hist.ValueAtQuantile(50))
		rep.P90Ms = ms(r.hist.ValueAtQuantile(90))
		rep.P99Ms = ms(r.hist.ValueAtQuantile(99))
		rep.P999Ms = ms(r.hist.ValueAtQuantile(99.9))
		rep.MaxMs = ms(r.hist.Max())
		for _, q := range DistributionQuantiles {
			rep.Distribution = append(rep.Distribution, Quantile{Percent: q, Ms: ms(r.hist.ValueAtQuantile(q))})
		}
	}
	rep.PerSecond = slices.Clone(r.perSecond)
	return rep
}

// Report is the result of one workload run.
type Report struct {
	Workload  string        `json:"workload"`
	Endpoints []string      `json:"endpoints"`
	Started   time.Time     `json:"started"`
	Elapsed   time.Duration `json:"elapsed_ns"`
	Ops       []OpReport    `json:"ops"`
	// Server holds the CPU the local server processes used during the
	// run, when they were found (ServerCPU).
	Server *ServerCPU `json:"server,omitempty"`
	// Memory is set by the watchers workload.
	Memory *MemoryReport `json:"memory,omitempty"`
	// Notes are facts about the run a reader needs (e.g. a watcher that
	// fell behind).
	Notes []string `json:"notes,omitempty"`
}

// WriteJSON writes the report as indented JSON.
func (r *Report) WriteJSON(w io.Writer) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(r)
}

// WriteTable writes the report as an aligned text table, one row per
// operation kind, then errors by message and server CPU.
func (r *Report) WriteTable(w io.Writer) error {
	fmt.Fprintf(w, "workload %s against %s, %v\n", r.Workload, strings.Join(r.Endpoints, ","), r.Elapsed.Round(time.Millisecond))
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "OP\tREQUESTS\tERRORS\tPER SEC\tMEAN ms\tP50 ms\tP90 ms\tP99 ms\tP99.9 ms\tMAX ms\t")
	for _, o := range r.Ops {
		fmt.Fprintf(tw, "%s\t%d\t%d\t%.0f\t%.2f\t%.2f\t%.2f\t%.2f\t%.2f\t%.2f\t\n",
			o.Op, o.Requests, o.Errors, o.Throughput, o.MeanMs, o.P50Ms, o.P90Ms, o.P99Ms, o.P999Ms, o.MaxMs)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	for _, o := range r.Ops {
		msgs := slices.Collect(maps.Keys(o.ErrorsBy))
		sort.Strings(msgs)
		for _, m := range msgs {
			fmt.Fprintf(w, "%s error x%d: %s\n", o.Op, o.ErrorsBy[m], m)
		}
	}
	if s := r.Server; s != nil {
		fmt.Fprintf(w, "server CPU: %.2f s over %d processes", s.Seconds, len(s.PIDs))
		if s.SecondsPerOp > 0 {
			fmt.Fprintf(w, ", %.1f µs per operation", s.SecondsPerOp*1e6)
		}
		fmt.Fprintln(w)
	}
	for _, n := range r.Notes {
		fmt.Fprintln(w, "note:", n)
	}
	return nil
}
