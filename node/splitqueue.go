package node

import (
	"bytes"
	"context"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"go.uber.org/zap"

	"github.com/rangekv/rangekv/kvstore"
	"github.com/rangekv/rangekv/rangeraft"
)

// splitCooldown keeps a range that just split from splitting again on
// load measured before the split (size needs none: it is exact).
const splitCooldown = 10 * time.Second

// splitQueue checks the user ranges this node leads once a second and
// splits those whose MVCC data exceeds --range-max-bytes (at the byte
// midpoint) or whose request rate, averaged over 10s, exceeds
// --range-split-qps (at the key that divides the sampled load).
func (n *Node) splitQueue() (time.Duration, func()) {
	if n.cfg.RangeMaxBytes <= 0 && n.cfg.RangeSplitQPS <= 0 {
		return 0, nil
	}
	lastSplit := map[uint64]time.Time{}
	return time.Second, func() {
		for _, r := range n.store.Replicas() {
			if r.Keyspace() != kvstore.UserKeys || !r.Initialized() {
				continue
			}
			st := r.Status()
			if !st.IsLeader {
				continue
			}
			var key []byte
			reason := ""
			switch {
			case n.cfg.RangeMaxBytes > 0 && st.Stats.TotalBytes > n.cfg.RangeMaxBytes:
				key, reason = sizeSplitKey(n.eng.DB, r), "size"
			case n.cfg.RangeSplitQPS > 0 && r.QPS() > n.cfg.RangeSplitQPS && time.Since(lastSplit[r.RangeID]) >= splitCooldown:
				key, reason = r.LoadSplitKey(), "load"
			}
			if key == nil {
				continue
			}
			userKey, ok := kvstore.UserKeyFromSpan(key)
			if !ok {
				continue
			}
			ctx, cancel := context.WithTimeout(context.Background(), n.reqTimeout)
			left, right, err := n.splitAt(ctx, userKey)
			cancel()
			if err != nil {
				n.log.Warn("automatic split failed", zap.Uint64("range-id", r.RangeID), zap.String("reason", reason), zap.Error(err))
				continue
			}
			now := time.Now()
			lastSplit[left.RangeID], lastSplit[right.RangeID] = now, now
			left.ResetLoad()
			n.log.Info("automatic split", zap.String("reason", reason), zap.Int64("bytes", st.Stats.TotalBytes),
				zap.Float64("qps", r.QPS()), zap.Uint64("range-id", left.RangeID), zap.Uint64("right-range-id", right.RangeID))
		}
	}
}

// sizeSplitKey returns the first key at which the range's stored versions
// reach half its bytes, or nil when no key strictly inside the range does.
func sizeSplitKey(db *pebble.DB, r *rangeraft.Replica) []byte {
	d := r.Descriptor()
	st := r.Status()
	half := st.Stats.TotalBytes / 2
	it, err := db.NewIter(&pebble.IterOptions{
		LowerBound: kvstore.MVCCSpanBound(d.StartKey),
		UpperBound: kvstore.MVCCSpanBound(d.EndKey),
	})
	if err != nil {
		return nil
	}
	defer it.Close()
	var seen int64
	var last []byte
	for valid := it.First(); valid; valid = it.Next() {
		key, _, err := kvstore.DecodeMVCCKey(it.Key())
		if err != nil {
			return nil
		}
		if !bytes.Equal(key, last) {
			if seen >= half && bytes.Compare(key, d.StartKey) > 0 {
				return key
			}
			last = key
		}
		seen += int64(len(it.Key()) + len(it.Value()))
	}
	return nil
}
