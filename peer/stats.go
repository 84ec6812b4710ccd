package peer

import (
	"context"
	"fmt"
	"log/slog"
	"sync/atomic"
	"time"
)

// Reasons counted in [Stats].Rejected, usable as metric labels; see
// [RejectReasons].
const (
	RejectStateMalformed   = "state_malformed"    // push/pull state that does not decode
	RejectStateTooLarge    = "state_too_large"    // push/pull state over Config.MaxStateBytes
	RejectMessageMalformed = "message_malformed"  // broadcast or reliable message that does not decode
	RejectMessageTooLarge  = "message_too_large"  // message over Config.MaxStateBytes
	RejectMetaMalformed    = "meta_malformed"     // node meta that does not decode: node refused
	RejectForeignOrigin    = "foreign_self_entry" // entry under this node's name from another node
	// RejectVersion counts messages, push/pull states and nodes of another
	// ProtocolVersion: gateways of one mesh must run one wire version.
	RejectVersion = "wire_version"
	// RejectVersionImplausible counts entries whose version no honest
	// gateway makes: an epoch further in the future than MaxClockSkew, or
	// a sequence number of MaxSeq or more.
	RejectVersionImplausible = "version_implausible"
	// RejectCountTooLarge counts entries with a healthy count over
	// MaxHealthyCount.
	RejectCountTooLarge = "count_too_large"
	// RejectEntryTooLarge counts entries over Config.MaxEntryBytes, alone:
	// the rest of a push/pull state still merges.
	RejectEntryTooLarge = "entry_too_large"
	// RejectStateBudget counts entries refused because holding them would
	// make this node's push/pull state exceed Config.MaxStateBytes.
	RejectStateBudget = "state_budget"
	// RejectUnsigned counts unsigned entries received by a node that
	// verifies signatures (it has a Config.Identity).
	RejectUnsigned = "unsigned"
	// RejectBadSignature counts entries whose signature does not verify
	// with the key of the certificate chain they name.
	RejectBadSignature = "bad_signature"
	// RejectUntrustedChain counts certificate chains that are not valid
	// X.509 SVIDs of a trust domain this node has a bundle for.
	RejectUntrustedChain = "untrusted_chain"
	// RejectNotGateway counts entries signed by a SPIFFE ID that
	// Config.AllowGateway refuses.
	RejectNotGateway = "not_gateway"
	// RejectIdentityMismatch counts entries signed by another SPIFFE ID
	// than the one their origin member announces in its meta.
	RejectIdentityMismatch = "identity_mismatch"
)

// RejectReasons returns every reason of [Stats].Rejected in a stable
// order, for pre-registering metric labels.
func RejectReasons() []string {
	out := make([]string, numReasons)
	for r := range numReasons {
		out[r] = r.String()
	}
	return out
}

// Stats are a node's counters, for metrics. Counters only grow.
type Stats struct {
	Alive, Dead, Left int // members by state, this node included
	Summaries         int // live nodes' summaries held, this node's included
	Services          int // service entries across those summaries
	Networks          int // distinct networks among them

	BytesIn, BytesOut uint64 // all gossip bytes, UDP and TCP, memberlist's own included

	PushPulls        uint64        // remote push/pull states merged (joins included)
	LastPushPull     time.Duration // time to decode and merge the last one
	StateBuilds      uint64        // times the cached local push/pull state was rebuilt
	StatesTooLarge   uint64        // push/pull states not sent: over MaxStateBytes, or memberlist's 20 MiB as sent
	Broadcasts       uint64        // entries queued for gossip, relays included
	DeltasSent       uint64        // publishes sent as deltas (changed services only), by gossip or TCP
	DeltasApplied    uint64        // remote deltas applied to the entry they were based on
	DeltaMisses      uint64        // remote deltas ignored: their base was not held (push/pull repairs)
	ReliableSends    uint64        // entries or deltas sent over TCP because too large for a packet
	ReliableFailures uint64        // such sends and introductions that failed (push/pull repairs them later)
	// Introductions counts this node's entry sent over TCP with its
	// certificate chain to a member it newly learned of (with an
	// identity only): broadcasts name the chain without carrying it.
	Introductions uint64
	Accepted      uint64 // remote entries newer than held, applied
	Stale         uint64 // remote entries not newer than held, ignored
	// Unverified counts remote entries ignored because their signing
	// chain or their origin member is not known here yet: a broadcast
	// that overtook the origin's introduction. Push/pull repairs.
	Unverified   uint64
	JoinAttempts uint64
	JoinFailures uint64
	// ReconnectPending is the number of failed members (declared dead, not
	// left) remembered for reconnecting: see Config.ReconnectInterval.
	ReconnectPending int
	// ReconnectAttempts counts reconnect joins tried, one per address: to
	// failed members, and to the seeds while the node is alone.
	ReconnectAttempts uint64
	// ReconnectSuccesses counts reconnect joins that reached another node.
	ReconnectSuccesses uint64
	// Rejected counts input from the network that was ignored, by reason
	// (the Reject* constants).
	Rejected map[string]uint64
}

// reason indexes the counters of Stats.Rejected.
type reason int

const (
	rStateMalformed reason = iota
	rStateTooLarge
	rMessageMalformed
	rMessageTooLarge
	rMetaMalformed
	rForeignOrigin
	rVersion
	rVersionImplausible
	rCountTooLarge
	rEntryTooLarge
	rStateBudget
	rUnsigned
	rBadSignature
	rUntrustedChain
	rNotGateway
	rIdentityMismatch
	numReasons
)

// String returns the reason's Reject* label.
func (r reason) String() string {
	switch r {
	case rStateMalformed:
		return RejectStateMalformed
	case rStateTooLarge:
		return RejectStateTooLarge
	case rMessageMalformed:
		return RejectMessageMalformed
	case rMessageTooLarge:
		return RejectMessageTooLarge
	case rMetaMalformed:
		return RejectMetaMalformed
	case rForeignOrigin:
		return RejectForeignOrigin
	case rVersion:
		return RejectVersion
	case rVersionImplausible:
		return RejectVersionImplausible
	case rCountTooLarge:
		return RejectCountTooLarge
	case rEntryTooLarge:
		return RejectEntryTooLarge
	case rStateBudget:
		return RejectStateBudget
	case rUnsigned:
		return RejectUnsigned
	case rBadSignature:
		return RejectBadSignature
	case rUntrustedChain:
		return RejectUntrustedChain
	case rNotGateway:
		return RejectNotGateway
	case rIdentityMismatch:
		return RejectIdentityMismatch
	}
	return fmt.Sprintf("reason(%d)", int(r))
}

type counters struct {
	bytesIn, bytesOut         atomic.Uint64
	pushPulls                 atomic.Uint64
	lastPushPull              atomic.Int64
	stateBuilds               atomic.Uint64
	statesTooLarge            atomic.Uint64
	broadcasts                atomic.Uint64
	reliableSends, reliableKO atomic.Uint64
	introductions             atomic.Uint64
	deltasSent, deltasApplied atomic.Uint64
	deltaMisses               atomic.Uint64
	accepted, stale           atomic.Uint64
	unverified                atomic.Uint64
	joinAttempts, joinKO      atomic.Uint64
	reconnectAttempts         atomic.Uint64
	reconnects                atomic.Uint64
	rejected                  [numReasons]atomic.Uint64
	lastRejectLog             [numReasons]atomic.Int64
}

// reject counts ignored input and logs it, at warning level at most once a
// second per reason, at debug level otherwise.
func (n *Node) reject(r reason, err error) {
	n.c.rejected[r].Add(1)
	now := time.Now().UnixNano()
	last := n.c.lastRejectLog[r].Load()
	level := slog.LevelDebug
	if now-last >= int64(time.Second) && n.c.lastRejectLog[r].CompareAndSwap(last, now) {
		level = slog.LevelWarn
	}
	n.log.Log(context.Background(), level, "ignoring gossip input", "reason", r.String(), "err", err)
}

// Stats returns the node's counters.
func (n *Node) Stats() Stats {
	s := Stats{
		BytesIn:          n.c.bytesIn.Load(),
		BytesOut:         n.c.bytesOut.Load(),
		PushPulls:        n.c.pushPulls.Load(),
		LastPushPull:     time.Duration(n.c.lastPushPull.Load()),
		StateBuilds:      n.c.stateBuilds.Load(),
		StatesTooLarge:   n.c.statesTooLarge.Load(),
		Broadcasts:       n.c.broadcasts.Load(),
		DeltasSent:       n.c.deltasSent.Load(),
		DeltasApplied:    n.c.deltasApplied.Load(),
		DeltaMisses:      n.c.deltaMisses.Load(),
		ReliableSends:    n.c.reliableSends.Load(),
		ReliableFailures: n.c.reliableKO.Load(),
		Introductions:    n.c.introductions.Load(),
		Accepted:         n.c.accepted.Load(),
		Stale:            n.c.stale.Load(),
		Unverified:       n.c.unverified.Load(),
		JoinAttempts:     n.c.joinAttempts.Load(),
		JoinFailures:     n.c.joinKO.Load(),
		Rejected:         make(map[string]uint64, numReasons),

		ReconnectAttempts:  n.c.reconnectAttempts.Load(),
		ReconnectSuccesses: n.c.reconnects.Load(),
	}
	for i := range numReasons {
		s.Rejected[i.String()] = n.c.rejected[i].Load()
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	for _, m := range n.members {
		switch m.state {
		case StateAlive:
			s.Alive++
		case StateDead:
			s.Dead++
		case StateLeft:
			s.Left++
		}
	}
	networks := make(map[string]bool)
	for _, e := range n.liveEntriesLocked() {
		s.Summaries++
		s.Services += len(e.summary.Services)
		networks[e.summary.Network] = true
	}
	s.Networks = len(networks)
	s.ReconnectPending = n.reconnects.len()
	return s
}
