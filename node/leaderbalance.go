package node

import (
	"cmp"
	"context"
	"fmt"
	"maps"
	"slices"
	"time"

	"go.uber.org/zap"

	"github.com/rangekv/rangekv/kvstore"
	"github.com/rangekv/rangekv/rangeraft"
)

// leaderBalanceInterval is how often a node checks whether it leads more
// than its share of user ranges.
const leaderBalanceInterval = 2 * time.Second

// leaderBalancer spreads range leaderships over the nodes
// (--leader-balance). A split leaves both halves led by the same node, so
// without it one node ends up leading every range a load created. Every
// interval, a node that leads at least two user ranges more than the
// live node leading the fewest hands one of them (its least loaded) to
// that node with raft's leadership transfer. One move per node per
// interval keeps the moves gradual; each node only gives away what it
// leads, so nodes never fight over a range. Counts come from this node's
// replicas, which today cover every range.
func (n *Node) leaderBalancer() (time.Duration, func()) {
	if !n.cfg.LeaderBalance || len(n.ident.InitialMembers) < 2 {
		return 0, nil
	}
	return leaderBalanceInterval, func() {
		if n.clockCheck.get() != "" {
			return // the clock monitor sheds everything already
		}
		r, target := n.leaderToShed()
		if r == nil {
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), leaderBalanceInterval)
		err := r.MoveLeader(ctx, target)
		cancel()
		if err != nil {
			n.log.Debug("leader balance: move failed", zap.Uint64("range-id", r.RangeID), zap.Error(err))
			return
		}
		n.log.Info("moved range leadership to balance leaders", zap.Uint64("range-id", r.RangeID),
			zap.String("to-node", fmt.Sprintf("%x", target)))
	}
}

// leaderToShed returns a user range this node leads and the node to hand
// it to, or nil when leaderships are balanced within one.
func (n *Node) leaderToShed() (*rangeraft.Replica, uint64) {
	live := n.store.PeerClockOffsets(clockOffsetFresh) // peers heard from lately
	counts := map[uint64]int{n.id: 0}
	for id := range live {
		counts[id] = 0
	}
	var mine []*rangeraft.Replica
	for _, r := range n.store.Replicas() {
		if r.Keyspace() != kvstore.UserKeys || !r.Initialized() {
			continue
		}
		st := r.Status()
		if _, ok := counts[st.LeaderNode]; ok {
			counts[st.LeaderNode]++
		}
		if st.IsLeader {
			mine = append(mine, r)
		}
	}
	target, fewest := uint64(0), len(mine)
	for _, id := range slices.Sorted(maps.Keys(counts)) {
		if id != n.id && counts[id] < fewest {
			target, fewest = id, counts[id]
		}
	}
	if target == 0 || len(mine) < fewest+2 {
		return nil, 0
	}
	slices.SortFunc(mine, func(a, b *rangeraft.Replica) int {
		switch qa, qb := a.QPS(), b.QPS(); {
		case qa < qb:
			return -1
		case qa > qb:
			return 1
		}
		return cmp.Compare(a.RangeID, b.RangeID)
	})
	return mine[0], target
}
