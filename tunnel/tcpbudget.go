package tunnel

import (
	"errors"
	"sync/atomic"

	"github.com/libp2p/go-yamux/v5"
)

// linkBudget is a TCP link's memory budget, shared by its yamux streams'
// receive windows (yamux.MemoryManager spans). Every stream's initial
// window is reserved (yamux kills the session if that fails, so the
// stream limit keeps them within budget); growth past it is granted only
// within the budget.
type linkBudget struct {
	limit int64
	used  atomic.Int64
}

func newLinkBudget(limit int64) *linkBudget { return &linkBudget{limit: limit} }

// errOverBudget is what a window growth past the budget gets; yamux then
// keeps the stream's window as it is.
var errOverBudget = errors.New("tunnel: TCP link memory budget exhausted")

// span returns the memory manager of one stream.
func (b *linkBudget) span() (yamux.MemoryManager, error) { return &budgetSpan{b: b}, nil }

// budgetSpan is one yamux stream's share of a linkBudget.
type budgetSpan struct {
	b    *linkBudget
	held atomic.Int64
}

// mustReserve is the priority yamux gives initial windows.
const mustReserve = 255

func (s *budgetSpan) ReserveMemory(size int, prio uint8) error {
	if n := s.b.used.Add(int64(size)); prio < mustReserve && n > s.b.limit {
		s.b.used.Add(-int64(size))
		return errOverBudget
	}
	s.held.Add(int64(size))
	return nil
}

func (s *budgetSpan) ReleaseMemory(size int) {
	s.held.Add(-int64(size))
	s.b.used.Add(-int64(size))
}

func (s *budgetSpan) Done() { s.b.used.Add(-s.held.Swap(0)) }
