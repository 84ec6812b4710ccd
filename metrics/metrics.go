// Package metrics provides lock-free counters, gauges and histograms and
// writes them in the Prometheus text exposition format.
//
// Metrics are registered once, at start-up, and then updated with atomic
// operations only, so the data path never takes a lock or allocates.
package metrics

import (
	"bufio"
	"fmt"
	"io"
	"math"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
)

// Registry holds metrics in registration order. The zero value is ready.
type Registry struct {
	mu      sync.Mutex
	metrics []writer
}

type writer interface {
	write(w *bufio.Writer)
}

// Counter is a monotonically increasing count.
type Counter struct{ v atomic.Uint64 }

// Inc adds one.
func (c *Counter) Inc() { c.v.Add(1) }

// Add adds n.
func (c *Counter) Add(n uint64) { c.v.Add(n) }

// Value returns the count.
func (c *Counter) Value() uint64 { return c.v.Load() }

// Gauge is a value that goes up and down.
type Gauge struct{ v atomic.Int64 }

// Add adds n, which may be negative.
func (g *Gauge) Add(n int64) { g.v.Add(n) }

// Set sets the value.
func (g *Gauge) Set(n int64) { g.v.Store(n) }

// Value returns the value.
func (g *Gauge) Value() int64 { return g.v.Load() }

// family is one metric name with its help, type and labelled series.
type family struct {
	name, help, typ string
	label           string
	mu              sync.Mutex
	series          map[string]any // label value -> *Counter, *Gauge or func() float64
}

// CounterVec is a family of counters told apart by one label.
type CounterVec struct{ f *family }

// With returns the counter for the label value, creating it on first use.
// Callers on hot paths should call With once and keep the *Counter.
func (v CounterVec) With(value string) *Counter {
	return v.f.get(value, func() any { return new(Counter) }).(*Counter)
}

// GaugeVec is a family of gauges told apart by one label.
type GaugeVec struct{ f *family }

// With returns the gauge for the label value, creating it on first use.
func (v GaugeVec) With(value string) *Gauge {
	return v.f.get(value, func() any { return new(Gauge) }).(*Gauge)
}

// Func makes the series of the label value read its value from f at
// scrape time, for a gauge another component keeps.
func (v GaugeVec) Func(value string, f func() float64) {
	v.f.get(value, func() any { return f })
}

// Func makes the series of the label value read its value from f at
// scrape time, for a count another component keeps; f must never
// decrease.
func (v CounterVec) Func(value string, f func() float64) {
	v.f.get(value, func() any { return f })
}

func (f *family) get(value string, mk func() any) any {
	f.mu.Lock()
	defer f.mu.Unlock()
	m, ok := f.series[value]
	if !ok {
		m = mk()
		f.series[value] = m
	}
	return m
}

func (r *Registry) add(m writer) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.metrics = append(r.metrics, m)
}

func (r *Registry) family(name, help, typ, label string) *family {
	f := &family{name: name, help: help, typ: typ, label: label, series: make(map[string]any)}
	r.add(f)
	return f
}

// Counter registers a counter.
func (r *Registry) Counter(name, help string) *Counter {
	return CounterVec{r.family(name, help, "counter", "")}.With("")
}

// CounterVec registers a counter family with one label.
func (r *Registry) CounterVec(name, help, label string) CounterVec {
	return CounterVec{r.family(name, help, "counter", label)}
}

// Gauge registers a gauge.
func (r *Registry) Gauge(name, help string) *Gauge {
	return GaugeVec{r.family(name, help, "gauge", "")}.With("")
}

// GaugeVec registers a gauge family with one label.
func (r *Registry) GaugeVec(name, help, label string) GaugeVec {
	return GaugeVec{r.family(name, help, "gauge", label)}
}

// GaugeFunc registers a gauge whose value is read from f at scrape time.
func (r *Registry) GaugeFunc(name, help string, f func() float64) {
	fam := r.family(name, help, "gauge", "")
	fam.series[""] = f
}

// CounterFunc registers a counter whose value is read from f at scrape
// time, for counts another component keeps; f must never decrease.
func (r *Registry) CounterFunc(name, help string, f func() float64) {
	fam := r.family(name, help, "counter", "")
	fam.series[""] = f
}

func (f *family) write(w *bufio.Writer) {
	fmt.Fprintf(w, "# HELP %s %s\n# TYPE %s %s\n", f.name, f.help, f.name, f.typ)
	f.mu.Lock()
	values := make([]string, 0, len(f.series))
	for v := range f.series {
		values = append(values, v)
	}
	f.mu.Unlock()
	slices.Sort(values)
	for _, v := range values {
		f.mu.Lock()
		m := f.series[v]
		f.mu.Unlock()
		w.WriteString(f.name)
		if f.label != "" {
			fmt.Fprintf(w, "{%s=%s}", f.label, strconv.Quote(v))
		}
		w.WriteByte(' ')
		switch m := m.(type) {
		case *Counter:
			w.WriteString(strconv.FormatUint(m.Value(), 10))
		case *Gauge:
			w.WriteString(strconv.FormatInt(m.Value(), 10))
		case func() float64:
			w.WriteString(formatFloat(m()))
		}
		w.WriteByte('\n')
	}
}

// Histogram counts observations in fixed buckets.
type Histogram struct {
	name, help string
	bounds     []float64
	counts     []atomic.Uint64 // one per bound, plus +Inf
	sumBits    atomic.Uint64   // float64 bits of the sum
}

// Histogram registers a histogram with the given upper bounds, ascending.
func (r *Registry) Histogram(name, help string, bounds []float64) *Histogram {
	h := &Histogram{name: name, help: help, bounds: bounds, counts: make([]atomic.Uint64, len(bounds)+1)}
	r.add(h)
	return h
}

// Observe records one value.
func (h *Histogram) Observe(v float64) {
	i, _ := slices.BinarySearch(h.bounds, v)
	h.counts[i].Add(1)
	for {
		old := h.sumBits.Load()
		if h.sumBits.CompareAndSwap(old, math.Float64bits(math.Float64frombits(old)+v)) {
			return
		}
	}
}

// Count returns the number of observations.
func (h *Histogram) Count() uint64 {
	var n uint64
	for i := range h.counts {
		n += h.counts[i].Load()
	}
	return n
}

func (h *Histogram) write(w *bufio.Writer) {
	fmt.Fprintf(w, "# HELP %s %s\n# TYPE %s histogram\n", h.name, h.help, h.name)
	var cum uint64
	for i, b := range h.bounds {
		cum += h.counts[i].Load()
		fmt.Fprintf(w, "%s_bucket{le=\"%s\"} %d\n", h.name, formatFloat(b), cum)
	}
	cum += h.counts[len(h.bounds)].Load()
	fmt.Fprintf(w, "%s_bucket{le=\"+Inf\"} %d\n", h.name, cum)
	fmt.Fprintf(w, "%s_sum %s\n%s_count %d\n", h.name, formatFloat(math.Float64frombits(h.sumBits.Load())), h.name, cum)
}

// WriteTo writes every metric in the Prometheus text format.
func (r *Registry) WriteTo(w io.Writer) (int64, error) {
	r.mu.Lock()
	ms := slices.Clone(r.metrics)
	r.mu.Unlock()
	cw := &countWriter{w: w}
	bw := bufio.NewWriter(cw)
	for _, m := range ms {
		m.write(bw)
	}
	err := bw.Flush()
	return cw.n, err
}

// ContentType is the media type of WriteTo's output.
const ContentType = "text/plain; version=0.0.4; charset=utf-8"

type countWriter struct {
	w io.Writer
	n int64
}

func (c *countWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}

func formatFloat(f float64) string {
	s := strconv.FormatFloat(f, 'g', -1, 64)
	if strings.ContainsAny(s, "e") {
		return strconv.FormatFloat(f, 'e', -1, 64)
	}
	return s
}
