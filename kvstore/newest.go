package kvstore

import (
	"sync"
)

// NewestCache remembers the newest stored version of recently written
// keys, so that applying a write does not seek the engine for the version
// it replaces (etcd keeps its whole key index in memory for the same
// reason; this keeps only what was written lately). A node's apply path
// shares one cache over all its ranges, keyed by span key.
//
// Invariant: an entry is the key's newest version as the apply path's
// batches see it. It holds because every MVCC write of the apply path goes
// through WriteBatch.writeVersion, which updates the entry, and every bulk
// change of a span (a snapshot replacing a range's data) calls Clear.
// Physical compaction may remove a tombstone an entry still holds; a
// tombstone and an absent key are applied alike, so that is harmless.
//
// Memory is bounded by keeping two generations: when the current one holds
// more than half of maxBytes (key, value and a fixed overhead per entry)
// it becomes the old one and the previous old one is dropped; a hit in
// the old generation moves to the current one.
type NewestCache struct {
	mu       sync.Mutex
	cur, old map[string]newestEntry
	curBytes int64
	maxBytes int64
}

type newestEntry struct {
	v    *Version // never nil
	size int64    // stored size: engine key + encoded value
}

// newestEntryOverhead approximates an entry's bytes beyond key and value.
const newestEntryOverhead = 128

// NewNewestCache returns an empty cache bounded to about maxBytes.
func NewNewestCache(maxBytes int64) *NewestCache {
	return &NewestCache{cur: map[string]newestEntry{}, maxBytes: maxBytes}
}

// get returns the cached newest version of spanKey.
func (c *NewestCache) get(spanKey []byte) (*Version, int64, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if e, ok := c.cur[string(spanKey)]; ok {
		return e.v, e.size, true
	}
	e, ok := c.old[string(spanKey)]
	if !ok {
		return nil, 0, false
	}
	delete(c.old, string(spanKey))
	c.addLocked(string(spanKey), e)
	return e.v, e.size, true
}

// set records v (not nil) as spanKey's newest version, of stored size.
// The cache keeps its own copy of the value.
func (c *NewestCache) set(spanKey []byte, v *Version, size int64) {
	cp := *v
	cp.Value = append([]byte(nil), v.Value...)
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.old, string(spanKey))
	c.addLocked(string(spanKey), newestEntry{v: &cp, size: size})
}

func (c *NewestCache) addLocked(key string, e newestEntry) {
	if prev, ok := c.cur[key]; ok {
		c.curBytes -= int64(len(key)+len(prev.v.Value)) + newestEntryOverhead
	}
	c.cur[key] = e
	c.curBytes += int64(len(key)+len(e.v.Value)) + newestEntryOverhead
	if c.curBytes > c.maxBytes/2 {
		c.old, c.cur, c.curBytes = c.cur, map[string]newestEntry{}, 0
	}
}

// Clear forgets every entry: for a bulk change of stored data (a snapshot
// replacing a range's keys).
func (c *NewestCache) Clear() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.cur, c.old, c.curBytes = map[string]newestEntry{}, nil, 0
}

// Len returns the number of cached keys.
func (c *NewestCache) Len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.cur) + len(c.old)
}
