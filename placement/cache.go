package placement

import (
	"bytes"
	"slices"
	"sort"
	"sync"

	"google.golang.org/protobuf/proto"

	"github.com/rangekv/rangekv/txnproto"
)

// Cache is a routing client's view of the range map: a set of range
// descriptors (txnproto.RangeInfo, in user keys) that never overlap,
// ordered by end key, with at most one entry per range ID. Gaps are
// normal: an entry is dropped when it is found stale and re-fetched only
// when a request needs it. Entries may be stale (a split the cache has not
// seen), never newer than the cluster's.
//
// Entries are immutable once cached: the *RangeInfo values Cache returns
// are shared snapshots that callers must not modify; SetLeader replaces an
// entry instead of changing it. All methods are safe for concurrent use.
// The zero Cache is empty and ready to use.
type Cache struct {
	mu sync.RWMutex
	// entries is sorted by end key, an empty end key (the end of the
	// keyspace) last; spans are disjoint.
	entries []*txnproto.RangeInfo
	// byID indexes entries by range ID.
	byID map[uint64]*txnproto.RangeInfo
}

// NewCache returns an empty cache.
func NewCache() *Cache { return &Cache{} }

// endAfter reports whether key lies below end, an empty end being the
// end of the keyspace.
func endAfter(end, key []byte) bool {
	return len(end) == 0 || bytes.Compare(key, end) < 0
}

// contains reports whether info's span [start_key, end_key) holds key.
func contains(info *txnproto.RangeInfo, key []byte) bool {
	return bytes.Compare(info.StartKey, key) <= 0 && endAfter(info.EndKey, key)
}

// firstEndingAfter returns the index of the first entry whose end key is
// above key (the only entry that can hold key). Callers hold mu.
func (c *Cache) firstEndingAfter(key []byte) int {
	return sort.Search(len(c.entries), func(i int) bool { return endAfter(c.entries[i].EndKey, key) })
}

// indexOf returns the index of e, which must be cached. Callers hold mu.
func (c *Cache) indexOf(e *txnproto.RangeInfo) int {
	var i int
	if len(e.EndKey) == 0 {
		i = len(c.entries) - 1
	} else {
		// The first entry ending at or after e's end: e itself.
		i = sort.Search(len(c.entries), func(i int) bool {
			end := c.entries[i].EndKey
			return len(end) == 0 || bytes.Compare(end, e.EndKey) >= 0
		})
	}
	if i < 0 || i >= len(c.entries) || c.entries[i] != e {
		panic("placement: range cache index out of sync")
	}
	return i
}

// Lookup returns the cached range whose span holds key, and false when no
// cached range does. O(log n).
func (c *Cache) Lookup(key []byte) (*txnproto.RangeInfo, bool) {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return c.lookupLocked(key)
}

func (c *Cache) lookupLocked(key []byte) (*txnproto.RangeInfo, bool) {
	i := c.firstEndingAfter(key)
	if i < len(c.entries) && contains(c.entries[i], key) {
		return c.entries[i], true
	}
	return nil, false
}

// LookupSpan returns the cached range holding every key of a request
// span given as etcd gives it: key alone when end is empty, [key, +inf)
// when end is "\x00", else [key, end); a span with end <= key holds no key
// and counts as inside the range holding key. It returns false when no
// single cached range is known to hold the span: with nil on a miss, with
// the cached range holding key when the span crosses that range's end.
func (c *Cache) LookupSpan(key, end []byte) (*txnproto.RangeInfo, bool) {
	c.mu.RLock()
	defer c.mu.RUnlock()
	info, ok := c.lookupLocked(key)
	if !ok {
		return nil, false
	}
	toEnd := len(end) == 1 && end[0] == 0
	switch {
	case toEnd:
		return info, len(info.EndKey) == 0
	case len(end) == 0 || bytes.Compare(end, key) <= 0:
		return info, true
	default:
		return info, len(info.EndKey) == 0 || bytes.Compare(end, info.EndKey) <= 0
	}
}

// Insert adds descriptors to the cache, one after another. A descriptor
// evicts every cached entry its span overlaps when it is newer than each
// of them (higher range ID, or the same ID at a higher generation); when any overlapping entry is newer it is dropped
// instead, so an old descriptor never replaces a newer one. Re-inserting
// a cached descriptor (same range ID and generation) refreshes it,
// keeping the cached leader when the new copy has none. Descriptors with
// an inverted span (end_key set and not above start_key) are ignored.
// Insert stores copies; the arguments may be reused.
func (c *Cache) Insert(infos ...*txnproto.RangeInfo) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, info := range infos {
		c.insertLocked(info)
	}
}

func (c *Cache) insertLocked(info *txnproto.RangeInfo) {
	if info == nil || len(info.EndKey) > 0 && bytes.Compare(info.StartKey, info.EndKey) >= 0 {
		return
	}
	// Overlapping entries are contiguous: from the first ending after the
	// new start, while they start before the new end.
	lo := c.firstEndingAfter(info.StartKey)
	hi := lo
	leader := info.LeaderNodeId
	for hi < len(c.entries) && endAfter(info.EndKey, c.entries[hi].StartKey) {
		e := c.entries[hi]
		if Supersedes(e, info) {
			return
		}
		if e.RangeId == info.RangeId && e.Generation == info.Generation && leader == 0 {
			leader = e.LeaderNodeId
		}
		hi++
	}
	// One entry per range ID: an older copy elsewhere (possible only if
	// descriptors were inconsistent) goes too, a newer one wins.
	if old, ok := c.byID[info.RangeId]; ok {
		if Supersedes(old, info) {
			return
		}
		if i := c.indexOf(old); i < lo || i >= hi {
			c.removeLocked(i)
			if i < lo {
				lo--
				hi--
			}
		}
	}
	for _, e := range c.entries[lo:hi] {
		delete(c.byID, e.RangeId)
	}
	e := proto.Clone(info).(*txnproto.RangeInfo)
	e.LeaderNodeId = leader
	c.entries = slices.Replace(c.entries, lo, hi, e)
	if c.byID == nil {
		c.byID = map[uint64]*txnproto.RangeInfo{}
	}
	c.byID[e.RangeId] = e
}

func (c *Cache) removeLocked(i int) {
	delete(c.byID, c.entries[i].RangeId)
	c.entries = slices.Delete(c.entries, i, i+1)
}

// Invalidate removes the entry of rangeID, if cached, so the next lookup
// of its keys misses and the caller re-fetches them.
func (c *Cache) Invalidate(rangeID uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if e, ok := c.byID[rangeID]; ok {
		c.removeLocked(c.indexOf(e))
	}
}

// SetLeader records leaderNode (a node ID; 0 means unknown) as the leader
// of rangeID at descriptor generation, and reports whether it did: only
// when that exact descriptor is cached. A cached entry of rangeID at a
// lower generation is stale and is removed; one at a higher generation is
// kept unchanged (the caller's information is the older).
func (c *Cache) SetLeader(rangeID, generation, leaderNode uint64) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	old, ok := c.byID[rangeID]
	switch {
	case !ok || old.Generation > generation:
		return false
	case old.Generation < generation:
		c.removeLocked(c.indexOf(old))
		return false
	case old.LeaderNodeId == leaderNode:
		return true
	}
	e := proto.Clone(old).(*txnproto.RangeInfo)
	e.LeaderNodeId = leaderNode
	c.entries[c.indexOf(old)] = e
	c.byID[rangeID] = e
	return true
}

// Len returns the number of cached ranges.
func (c *Cache) Len() int {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return len(c.entries)
}

// All returns the cached ranges in key order (shared snapshots; see
// Cache).
func (c *Cache) All() []*txnproto.RangeInfo {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return slices.Clone(c.entries)
}

// Clear empties the cache.
func (c *Cache) Clear() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.entries, c.byID = nil, nil
}
