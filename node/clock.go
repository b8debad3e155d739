package node

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/rangekv/rangekv/hlc"
)

// clockCheckInterval is how often a node compares its clock with its
// peers'; clockOffsetFresh how recent a peer's measurement must be to
// count.
const (
	clockCheckInterval = 250 * time.Millisecond
	clockOffsetFresh   = 5 * time.Second
)

// newClock returns the node's HLC over the wall clock shifted by
// cfg.UnsafeClockSkew (zero outside fault-injection tests).
func newClock(cfg Config) *hlc.Clock {
	if cfg.UnsafeClockSkew == 0 {
		return hlc.New(cfg.MaxClockOffset)
	}
	skew := cfg.UnsafeClockSkew.Milliseconds()
	return hlc.NewWithWall(func() int64 { return time.Now().UnixMilli() + skew }, cfg.MaxClockOffset)
}

// clockState is the outcome of the last clock check: "" when the node may
// serve, else why it does not.
type clockState struct {
	problem atomic.Pointer[string]
	// mu guards fencedc, closed when the node stops serving (set) and
	// replaced once it serves again: open watch streams end on it.
	mu      sync.Mutex
	fencedc chan struct{}
}

func (c *clockState) get() string {
	if p := c.problem.Load(); p != nil {
		return *p
	}
	return ""
}

// set records the outcome of a check: problem "" serves again.
func (c *clockState) set(problem string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if problem == "" {
		c.problem.Store(nil)
		return
	}
	c.problem.Store(&problem)
	if c.fencedc != nil {
		close(c.fencedc)
		c.fencedc = nil
	}
}

// fenced returns a channel closed the next time the node stops serving.
func (c *clockState) fenced() <-chan struct{} {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.fencedc == nil {
		c.fencedc = make(chan struct{})
	}
	return c.fencedc
}

// clockMonitor enforces --max-clock-offset, as CockroachDB's remote
// clock monitor does: every clockCheckInterval it takes the offset each
// peer's last raft batch showed (the sender's wall clock against this
// node's, transit time ignored; batches flow every tick even when idle). A node off
// by more than the maximum from more than half of its peers is the one
// whose clock is wrong: it stops serving clients (KV and Watch fail with
// Unavailable, /readyz fails its clock_offset check), hands the
// leadership of its ranges to other nodes, and logs why. It serves again
// once its clock is back within bounds. A peer that is off from only a
// minority does not stop.
func (n *Node) clockMonitor() (time.Duration, func()) {
	peers := len(n.ident.InitialMembers) - 1
	if peers <= 0 {
		return 0, nil
	}
	limit := n.cfg.MaxClockOffset
	return clockCheckInterval, func() {
		offs := n.store.PeerClockOffsets(clockOffsetFresh)
		var far []string
		for _, id := range slices.Sorted(maps.Keys(offs)) {
			if off := offs[id]; off > limit || off < -limit {
				far = append(far, fmt.Sprintf("%x by %v", id, off))
			}
		}
		problem := ""
		if 2*len(far) > peers {
			problem = fmt.Sprintf("rangekv: this node's clock is off from %d of %d peers by more than --max-clock-offset (%v): %s; not serving until it is back within bounds",
				len(far), peers, limit, strings.Join(far, ", "))
		}
		prev := n.clockCheck.get()
		switch {
		case problem != "" && prev == "":
			n.log.Error("clock offset exceeds --max-clock-offset; refusing client requests and handing off leadership",
				zap.Duration("max-clock-offset", limit), zap.Strings("peers-off", far))
		case problem == "" && prev != "":
			n.log.Info("clock offset back within --max-clock-offset; serving again")
		}
		n.clockCheck.set(problem)
		if problem != "" {
			n.store.ShedLeadership()
		}
	}
}

// clockGate refuses KV and Watch calls while the node's clock is off
// (clockMonitor); other services (status, health, ranges) keep
// answering so that operators can see why. On the peer server the refusal
// reads as "not leader", which forwarding nodes retry elsewhere.
func (n *Node) clockGate(method string, peer bool) error {
	if !strings.HasPrefix(method, "/etcdserverpb.KV/") && !strings.HasPrefix(method, "/etcdserverpb.Watch/") {
		return nil
	}
	p := n.clockCheck.get()
	switch {
	case p == "":
		return nil
	case peer:
		return status.Errorf(codes.Unavailable, "%s: clock offset (%s)", notLeaderPrefix, p)
	}
	return status.Error(codes.Unavailable, p)
}

// clockInterceptors returns the gRPC interceptors applying clockGate.
func (n *Node) clockInterceptors(peer bool) []grpc.ServerOption {
	return []grpc.ServerOption{
		grpc.ChainUnaryInterceptor(func(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
			if err := n.clockGate(info.FullMethod, peer); err != nil {
				return nil, err
			}
			return h(ctx, req)
		}),
		grpc.ChainStreamInterceptor(func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, h grpc.StreamHandler) error {
			fenced := n.clockCheck.fenced() // before the check: a fence after it closes it
			if err := n.clockGate(info.FullMethod, peer); err != nil {
				return err
			}
			if !strings.HasPrefix(info.FullMethod, "/etcdserverpb.Watch/") {
				return h(srv, ss)
			}
			// A watch stream open when the node stops serving ends with the
			// reason, so its client resumes elsewhere: a fenced node closes
			// nothing at its own clock, and its events would stall.
			ctx, cancel := context.WithCancel(ss.Context())
			defer cancel()
			go func() {
				select {
				case <-fenced:
					cancel()
				case <-ctx.Done():
				}
			}()
			err := h(srv, fencedStream{ServerStream: ss, ctx: ctx})
			if ctx.Err() != nil && ss.Context().Err() == nil && n.clockCheck.get() != "" {
				return n.clockGate(info.FullMethod, peer)
			}
			return err
		}),
	}
}

// fencedStream is a server stream whose context also ends when the node
// stops serving (clockInterceptors).
type fencedStream struct {
	grpc.ServerStream
	ctx context.Context
}

func (s fencedStream) Context() context.Context { return s.ctx }
