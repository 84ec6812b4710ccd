package gateway

import (
	"sync"
	"sync/atomic"

	"github.com/ewgate/ewgate/sni"
)

// maxIdleHandlers bounds the handler goroutines kept waiting for the
// next connection. A handler is busy only from accept to forwarding
// (the hello is there at accept: TCP_DEFER_ACCEPT), so a few cover a
// high connection rate; a burst of slow clients leaves at most this many
// behind, each with its grown stack (8 KiB).
const maxIdleHandlers = 16

// handlers runs the handler (handle) of each accepted connection on a
// goroutine that, once done, waits for the next connection instead of
// exiting. net's connect path is deeper than a new goroutine's stack, so
// a goroutine per connection grew (copied) its stack in every dial; a
// handler that serves one connection after another grows it once (and
// again after the garbage collector shrank it while idle).
type handlers struct {
	next chan handlerJob
	idle atomic.Int32 // handlers waiting on next, or about to
	quit chan struct{}
	once sync.Once
	wg   sync.WaitGroup
}

type handlerJob struct {
	port uint32
	f    *flow
	pre  *preread
}

// preread is what an event loop read of a connection it hands to a
// handler (loop.serve): the first n bytes in *bp, the pooled hello
// buffer, and, if routed, the hello they hold and the loop's routing
// decision, plan p by table t, which handle carries out rather than
// route again.
type preread struct {
	bp     *[]byte
	n      int
	routed bool
	hello  sni.Hello
	t      *table
	p      plan
}

func newHandlers() *handlers {
	return &handlers{next: make(chan handlerJob), quit: make(chan struct{})}
}

// dispatch handles f, accepted on port, on a waiting handler, or on a new
// one if none is waiting.
func (g *Gateway) dispatch(port uint32, f *flow, pre *preread) {
	h := g.handlers
	j := handlerJob{port, f, pre}
	select {
	case h.next <- j:
	default:
		h.wg.Add(1)
		go g.handler(j)
	}
}

// handler handles f, then the connections dispatch gives it, until more
// than maxIdleHandlers would wait or the gateway stops them.
func (g *Gateway) handler(j handlerJob) {
	h := g.handlers
	defer h.wg.Done()
	dc := newDialContext()
	for {
		g.handle(j.port, j.f, dc, j.pre)
		if h.idle.Add(1) > maxIdleHandlers {
			h.idle.Add(-1)
			return
		}
		select {
		case j = <-h.next:
			h.idle.Add(-1)
		case <-h.quit:
			h.idle.Add(-1)
			return
		}
	}
}

// stop ends the waiting handlers and waits for every handler to return;
// call it once nothing dispatches any more.
func (h *handlers) stop() {
	h.once.Do(func() { close(h.quit) })
	h.wg.Wait()
}
