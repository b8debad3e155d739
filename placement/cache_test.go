package placement

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/rangekv/rangekv/txnproto"
)

// ri builds a RangeInfo; end "" is the end of the keyspace.
func ri(id, gen uint64, start, end string, leader uint64) *txnproto.RangeInfo {
	info := &txnproto.RangeInfo{RangeId: id, Generation: gen, StartKey: []byte(start), LeaderNodeId: leader}
	if end != "" {
		info.EndKey = []byte(end)
	}
	return info
}

// shape renders a cache's entries as "id/gen[start,end)@leader" strings.
func shape(infos []*txnproto.RangeInfo) []string {
	out := []string{}
	for _, e := range infos {
		out = append(out, fmt.Sprintf("%d/%d[%s,%s)@%d", e.RangeId, e.Generation, e.StartKey, e.EndKey, e.LeaderNodeId))
	}
	return out
}

func TestCacheLookup(t *testing.T) {
	c := NewCache()
	c.Insert(ri(1, 2, "", "b", 1), ri(3, 2, "b", "m", 2), ri(4, 1, "p", "", 3))
	require.Equal(t, 3, c.Len())

	for _, tc := range []struct {
		key string
		id  uint64 // 0: miss
	}{
		{"", 1}, {"a", 1}, {"a\xff\xff", 1}, {"b", 3}, {"b\x00", 3}, {"lzzz", 3},
		{"m", 0}, {"o", 0}, {"p", 4}, {"zzzz", 4}, {"\xff\xff", 4},
	} {
		info, ok := c.Lookup([]byte(tc.key))
		if tc.id == 0 {
			require.False(t, ok, "key %q", tc.key)
			require.Nil(t, info)
			continue
		}
		require.True(t, ok, "key %q", tc.key)
		require.Equal(t, tc.id, info.RangeId, "key %q", tc.key)
	}
}

func TestCacheLookupSpan(t *testing.T) {
	c := NewCache()
	c.Insert(ri(1, 2, "", "b", 1), ri(3, 2, "b", "m", 2), ri(4, 1, "p", "", 3))
	for _, tc := range []struct {
		key, end string
		id       uint64 // range returned
		ok       bool
	}{
		{"a", "", 1, true},             // single key
		{"a", "a\x00", 1, true},        // same, as an explicit span
		{"a", "b", 1, true},            // up to the range's end
		{"a", "b\x00", 1, false},       // one key past it
		{"b", "c", 3, true},            // prefix inside
		{"c", "a", 3, true},            // end <= key: empty span
		{"c", "c", 3, true},            // empty span
		{"c", "\x00", 3, false},        // to +inf crosses
		{"q", "\x00", 4, true},         // to +inf in the last range
		{"\x00", "\x00", 1, false},     // everything
		{"q", "\xff\xff\xff", 4, true}, // last range, bounded
		{"n", "", 0, false},            // gap
		{"n", "q", 0, false},           // starts in a gap
	} {
		info, ok := c.LookupSpan([]byte(tc.key), []byte(tc.end))
		require.Equal(t, tc.ok, ok, "span [%q, %q)", tc.key, tc.end)
		if tc.id == 0 {
			require.Nil(t, info, "span [%q, %q)", tc.key, tc.end)
		} else {
			require.Equal(t, tc.id, info.RangeId, "span [%q, %q)", tc.key, tc.end)
		}
	}
}

func TestCacheInsert(t *testing.T) {
	for _, tc := range []struct {
		name    string
		initial []*txnproto.RangeInfo
		insert  []*txnproto.RangeInfo
		want    []string
	}{{
		name:   "empty",
		insert: []*txnproto.RangeInfo{ri(1, 1, "", "", 7)},
		want:   []string{"1/1[,)@7"},
	}, {
		name:    "split: right-hand side evicts the old range",
		initial: []*txnproto.RangeInfo{ri(1, 1, "", "", 7)},
		insert:  []*txnproto.RangeInfo{ri(5, 2, "m", "", 8)},
		want:    []string{"5/2[m,)@8"},
	}, {
		name:    "split: both sides",
		initial: []*txnproto.RangeInfo{ri(1, 1, "", "", 7)},
		insert:  []*txnproto.RangeInfo{ri(1, 2, "", "m", 7), ri(5, 2, "m", "", 8)},
		want:    []string{"1/2[,m)@7", "5/2[m,)@8"},
	}, {
		name:    "older descriptor of the same range is dropped",
		initial: []*txnproto.RangeInfo{ri(1, 2, "", "m", 7)},
		insert:  []*txnproto.RangeInfo{ri(1, 1, "", "", 9)},
		want:    []string{"1/2[,m)@7"},
	}, {
		name:    "pre-split descriptor does not evict the right-hand side",
		initial: []*txnproto.RangeInfo{ri(5, 2, "m", "", 8)},
		insert:  []*txnproto.RangeInfo{ri(1, 1, "", "", 7)},
		want:    []string{"5/2[m,)@8"},
	}, {
		name:    "newer descriptor evicts several",
		initial: []*txnproto.RangeInfo{ri(1, 3, "", "c", 1), ri(2, 3, "c", "f", 1), ri(3, 3, "f", "k", 1), ri(4, 3, "k", "", 1)},
		insert:  []*txnproto.RangeInfo{ri(9, 4, "d", "g", 2)},
		want:    []string{"1/3[,c)@1", "9/4[d,g)@2", "4/3[k,)@1"},
	}, {
		name:    "one older overlapping entry among newer ones blocks nothing else",
		initial: []*txnproto.RangeInfo{ri(2, 3, "c", "f", 1), ri(12, 3, "f", "k", 1)},
		insert:  []*txnproto.RangeInfo{ri(9, 4, "d", "g", 2)},
		want:    []string{"2/3[c,f)@1", "12/3[f,k)@1"},
	}, {
		name:    "same descriptor refreshes, keeps a known leader",
		initial: []*txnproto.RangeInfo{ri(1, 1, "", "m", 7), ri(2, 1, "m", "", 7)},
		insert:  []*txnproto.RangeInfo{ri(1, 1, "", "m", 0), ri(2, 1, "m", "", 8)},
		want:    []string{"1/1[,m)@7", "2/1[m,)@8"},
	}, {
		name:    "adjacent entries are untouched",
		initial: []*txnproto.RangeInfo{ri(1, 1, "", "c", 1), ri(3, 1, "f", "", 1)},
		insert:  []*txnproto.RangeInfo{ri(2, 1, "c", "f", 2)},
		want:    []string{"1/1[,c)@1", "2/1[c,f)@2", "3/1[f,)@1"},
	}, {
		name:   "inverted span ignored",
		insert: []*txnproto.RangeInfo{ri(1, 1, "m", "c", 1), ri(2, 1, "m", "m", 1)},
		want:   []string{},
	}} {
		t.Run(tc.name, func(t *testing.T) {
			c := NewCache()
			c.Insert(tc.initial...)
			c.Insert(tc.insert...)
			require.Equal(t, tc.want, shape(c.All()))
		})
	}
}

func TestCacheInsertCopies(t *testing.T) {
	c := NewCache()
	info := ri(1, 1, "", "", 7)
	c.Insert(info)
	info.LeaderNodeId = 9
	info.StartKey = []byte("zzz")
	got, ok := c.Lookup([]byte("a"))
	require.True(t, ok)
	require.Equal(t, uint64(7), got.LeaderNodeId)
}

func TestCacheSetLeaderAndInvalidate(t *testing.T) {
	c := NewCache()
	c.Insert(ri(1, 2, "", "m", 1), ri(5, 2, "m", "", 1))
	before, _ := c.Lookup([]byte("a"))

	require.True(t, c.SetLeader(1, 2, 3))
	after, _ := c.Lookup([]byte("a"))
	require.Equal(t, uint64(3), after.LeaderNodeId)
	require.Equal(t, uint64(1), before.LeaderNodeId, "returned entries are snapshots")

	require.False(t, c.SetLeader(7, 1, 3), "unknown range")
	require.False(t, c.SetLeader(1, 1, 2), "older generation")
	require.Equal(t, []string{"1/2[,m)@3", "5/2[m,)@1"}, shape(c.All()))

	require.False(t, c.SetLeader(5, 3, 2), "newer generation: the cached entry is stale")
	require.Equal(t, []string{"1/2[,m)@3"}, shape(c.All()))

	c.Invalidate(1)
	c.Invalidate(42)
	require.Zero(t, c.Len())
	_, ok := c.Lookup([]byte("a"))
	require.False(t, ok)
}

// history is a cluster's range map evolving through random splits, with
// every descriptor it ever had.
type history struct {
	rng    *rand.Rand
	truth  []*txnproto.RangeInfo // current tiling, in key order
	all    []*txnproto.RangeInfo
	nextID uint64
}

func newHistory(rng *rand.Rand) *history {
	first := ri(1, 1, "", "", 1)
	return &history{rng: rng, truth: []*txnproto.RangeInfo{first}, all: []*txnproto.RangeInfo{first}, nextID: 2}
}

// randKey returns a short key over a small alphabet, so splits and probes
// collide often.
func randKey(rng *rand.Rand) []byte {
	k := make([]byte, 1+rng.IntN(3))
	for i := range k {
		k[i] = "abcdef"[rng.IntN(6)]
	}
	return k
}

// split splits a random range at a random key strictly inside it.
func (h *history) split() {
	k := randKey(h.rng)
	i := slices.IndexFunc(h.truth, func(r *txnproto.RangeInfo) bool { return contains(r, k) })
	r := h.truth[i]
	if bytes.Equal(r.StartKey, k) {
		return
	}
	left := ri(r.RangeId, r.Generation+1, string(r.StartKey), string(k), uint64(1+h.rng.IntN(3)))
	right := ri(h.nextID, left.Generation, string(k), string(r.EndKey), uint64(1+h.rng.IntN(3)))
	h.nextID++
	h.truth = slices.Replace(h.truth, i, i+1, left, right)
	h.all = append(h.all, left, right)
}

// sameEntries reports whether a and b hold the same descriptors and
// leaders, in order.
func sameEntries(a, b []*txnproto.RangeInfo) bool {
	return slices.EqualFunc(a, b, func(x, y *txnproto.RangeInfo) bool {
		return x.RangeId == y.RangeId && x.Generation == y.Generation && x.LeaderNodeId == y.LeaderNodeId &&
			bytes.Equal(x.StartKey, y.StartKey) && bytes.Equal(x.EndKey, y.EndKey)
	})
}

// model is the cache's specification, executed naively.
type model struct{ entries []*txnproto.RangeInfo }

func overlaps(a, b *txnproto.RangeInfo) bool {
	return endAfter(a.EndKey, b.StartKey) && endAfter(b.EndKey, a.StartKey)
}

func (m *model) insert(d *txnproto.RangeInfo) {
	clash := func(e *txnproto.RangeInfo) bool { return overlaps(e, d) || e.RangeId == d.RangeId }
	leader := d.LeaderNodeId
	for _, e := range m.entries {
		if clash(e) && Supersedes(e, d) {
			return
		}
		if e.RangeId == d.RangeId && e.Generation == d.Generation && leader == 0 {
			leader = e.LeaderNodeId
		}
	}
	m.entries = slices.DeleteFunc(m.entries, clash)
	c := ri(d.RangeId, d.Generation, string(d.StartKey), string(d.EndKey), leader)
	m.entries = append(m.entries, c)
	slices.SortFunc(m.entries, func(a, b *txnproto.RangeInfo) int {
		switch {
		case len(a.EndKey) == 0:
			return 1
		case len(b.EndKey) == 0:
			return -1
		}
		return bytes.Compare(a.EndKey, b.EndKey)
	})
}

func (m *model) lookup(k []byte) *txnproto.RangeInfo {
	for _, e := range m.entries {
		if contains(e, k) {
			return e
		}
	}
	return nil
}

func (m *model) setLeader(id, gen, leader uint64) bool {
	i := slices.IndexFunc(m.entries, func(e *txnproto.RangeInfo) bool { return e.RangeId == id })
	switch {
	case i < 0 || m.entries[i].Generation > gen:
		return false
	case m.entries[i].Generation < gen:
		m.entries = slices.Delete(m.entries, i, i+1)
		return false
	}
	m.entries[i].LeaderNodeId = leader
	return true
}

func (m *model) invalidate(id uint64) {
	m.entries = slices.DeleteFunc(m.entries, func(e *txnproto.RangeInfo) bool { return e.RangeId == id })
}

// TestCacheRandomized runs random inserts of current and stale
// descriptors, leader updates and invalidations against the model, and
// checks after every step that entries are disjoint and sorted, match the
// model, come from the history, and that an insert never made the entry
// covering any key older.
func TestCacheRandomized(t *testing.T) {
	for seed := range uint64(40) {
		t.Run(fmt.Sprint(seed), func(t *testing.T) {
			rng := rand.New(rand.NewPCG(seed, 0))
			h := newHistory(rng)
			c, m := NewCache(), &model{}
			known := map[[2]uint64]string{}
			for step := range 400 {
				var covering map[string]*txnproto.RangeInfo
				probes := make([][]byte, 8)
				for i := range probes {
					probes[i] = randKey(rng)
				}
				switch op := rng.IntN(10); {
				case op < 2:
					h.split()
				case op < 6:
					// A stale or current descriptor, with a random leader.
					d := ri(0, 0, "", "", uint64(rng.IntN(4)))
					src := h.all[rng.IntN(len(h.all))]
					if rng.IntN(2) == 0 {
						src = h.truth[rng.IntN(len(h.truth))]
					}
					d.RangeId, d.Generation, d.StartKey, d.EndKey = src.RangeId, src.Generation, src.StartKey, src.EndKey
					covering = map[string]*txnproto.RangeInfo{}
					for _, p := range probes {
						if e, ok := c.Lookup(p); ok {
							covering[string(p)] = e
						}
					}
					c.Insert(d)
					m.insert(d)
				case op < 7:
					c.Insert(h.truth...)
					for _, d := range h.truth {
						m.insert(d)
					}
					if !sameEntries(h.truth, c.All()) {
						require.Equal(t, shape(h.truth), shape(c.All()), "step %d: a full refresh yields the truth", step)
					}
				case op < 9:
					src := h.all[rng.IntN(len(h.all))]
					gen := src.Generation - 1 + uint64(rng.IntN(3))
					leader := uint64(rng.IntN(4))
					require.Equal(t, m.setLeader(src.RangeId, gen, leader), c.SetLeader(src.RangeId, gen, leader), "step %d", step)
				default:
					id := uint64(1 + rng.IntN(int(h.nextID)))
					c.Invalidate(id)
					m.invalidate(id)
				}

				got := c.All()
				if !sameEntries(m.entries, got) {
					require.Equal(t, shape(m.entries), shape(got), "step %d", step)
				}
				require.Equal(t, len(got), c.Len())
				for i, e := range got {
					if i > 0 {
						if len(got[i-1].EndKey) == 0 || bytes.Compare(got[i-1].EndKey, e.StartKey) > 0 {
							t.Fatalf("step %d: entries overlap or are out of order: %v", step, shape(got))
						}
					}
				}
				for _, d := range h.all {
					known[[2]uint64{d.RangeId, d.Generation}] = string(d.StartKey) + "|" + string(d.EndKey)
				}
				for _, e := range got {
					require.Equal(t, known[[2]uint64{e.RangeId, e.Generation}], string(e.StartKey)+"|"+string(e.EndKey),
						"step %d: cached descriptor not from the history", step)
				}
				for _, p := range probes {
					want := m.lookup(p)
					e, ok := c.Lookup(p)
					require.Equal(t, want != nil, ok, "step %d key %q", step, p)
					if ok {
						require.Equal(t, want.RangeId, e.RangeId)
					}
					if before := covering[string(p)]; before != nil && ok && Supersedes(before, e) {
						t.Fatalf("step %d key %q: %v replaced by older %v", step, p, shape([]*txnproto.RangeInfo{before}), shape([]*txnproto.RangeInfo{e}))
					}
					end := randKey(rng)
					switch rng.IntN(4) {
					case 0:
						end = nil // the key alone
					case 1:
						end = []byte{0} // to the end of the keyspace
					}
					span, ok := c.LookupSpan(p, end)
					if want == nil {
						require.False(t, ok)
						require.Nil(t, span)
						continue
					}
					require.Equal(t, want.RangeId, span.RangeId)
					inside := len(want.EndKey) == 0 || bytes.Compare(end, p) <= 0 || bytes.Compare(end, want.EndKey) <= 0
					if bytes.Equal(end, []byte{0}) {
						inside = len(want.EndKey) == 0
					}
					require.Equal(t, inside, ok, "step %d span [%q, %q) in %d/%d", step, p, end, want.RangeId, want.Generation)
				}
			}
		})
	}
}

// TestCacheConcurrent exercises every method from several goroutines (run
// with -race).
func TestCacheConcurrent(t *testing.T) {
	c := NewCache()
	h := newHistory(rand.New(rand.NewPCG(1, 2)))
	for range 30 {
		h.split()
	}
	done := make(chan struct{})
	for g := range 4 {
		go func() {
			defer func() { done <- struct{}{} }()
			rng := rand.New(rand.NewPCG(uint64(g), 9))
			for range 2000 {
				d := h.all[rng.IntN(len(h.all))]
				switch rng.IntN(5) {
				case 0:
					c.Insert(d)
				case 1:
					c.SetLeader(d.RangeId, d.Generation, uint64(rng.IntN(3)))
				case 2:
					c.Invalidate(d.RangeId)
				default:
					if e, ok := c.Lookup(randKey(rng)); ok {
						_ = e.LeaderNodeId
					}
					c.LookupSpan(randKey(rng), randKey(rng))
					_ = c.Len()
				}
			}
		}()
	}
	for range 4 {
		<-done
	}
	c.Insert(h.truth...)
	require.Equal(t, shape(h.truth), shape(c.All()))
}
