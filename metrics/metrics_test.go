package metrics

import (
	"strings"
	"sync"
	"testing"
)

func TestExposition(t *testing.T) {
	var r Registry
	c := r.Counter("x_total", "Things.")
	v := r.CounterVec("y_total", "Things by kind.", "kind")
	g := r.Gauge("z", "Level.")
	r.GaugeFunc("f", "Computed.", func() float64 { return 1.5 })
	r.CounterFunc("cf_total", "Counted elsewhere.", func() float64 { return 9 })
	h := r.Histogram("h_seconds", "Durations.", []float64{0.1, 1})
	c.Add(3)
	v.With("b").Inc()
	v.With("a").Add(2)
	g.Add(5)
	g.Add(-7)
	for _, x := range []float64{0.05, 0.1, 0.5, 2} {
		h.Observe(x)
	}
	var sb strings.Builder
	if _, err := r.WriteTo(&sb); err != nil {
		t.Fatal(err)
	}
	want := `# HELP x_total Things.
# TYPE x_total counter
x_total 3
# HELP y_total Things by kind.
# TYPE y_total counter
y_total{kind="a"} 2
y_total{kind="b"} 1
# HELP z Level.
# TYPE z gauge
z -2
# HELP f Computed.
# TYPE f gauge
f 1.5
# HELP cf_total Counted elsewhere.
# TYPE cf_total counter
cf_total 9
# HELP h_seconds Durations.
# TYPE h_seconds histogram
h_seconds_bucket{le="0.1"} 2
h_seconds_bucket{le="1"} 3
h_seconds_bucket{le="+Inf"} 4
h_seconds_sum 2.65
h_seconds_count 4
`
	if sb.String() != want {
		t.Fatalf("got:\n%s\nwant:\n%s", sb.String(), want)
	}
}

func TestLabelValuesAreQuoted(t *testing.T) {
	var r Registry
	r.CounterVec("q_total", "Q.", "v").With("a\"b\\c\nd").Inc()
	var sb strings.Builder
	r.WriteTo(&sb)
	if !strings.Contains(sb.String(), `q_total{v="a\"b\\c\nd"} 1`) {
		t.Fatalf("label not escaped:\n%s", sb.String())
	}
}

func TestConcurrentUpdates(t *testing.T) {
	var r Registry
	c := r.Counter("c_total", "C.")
	h := r.Histogram("h", "H.", []float64{1})
	v := r.CounterVec("v_total", "V.", "k")
	var wg sync.WaitGroup
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 1000 {
				c.Inc()
				h.Observe(0.5)
				v.With("k").Inc()
			}
		}()
	}
	var sb strings.Builder
	r.WriteTo(&sb) // concurrently with the writers
	wg.Wait()
	if c.Value() != 8000 || h.Count() != 8000 || v.With("k").Value() != 8000 {
		t.Fatalf("counter %d, histogram %d, vec %d; want 8000 each", c.Value(), h.Count(), v.With("k").Value())
	}
}
