package kvstore

import (
	"testing"

	"github.com/stretchr/testify/require"
)

// TestNewestCacheGenerations checks the cache's bound: entries move to
// the old generation when the current one fills, survive one rotation,
// come back on a hit, and are gone after two rotations; Clear forgets all.
func TestNewestCacheGenerations(t *testing.T) {
	c := NewNewestCache(2 * (3*(newestEntryOverhead+2) - 1)) // rotates on the third 2-byte entry
	v := func(val string) *Version {
		return &Version{CreateRevision: 1, ModRevision: 2, Version: 1, Value: []byte(val)}
	}
	c.set([]byte("k1"), v(""), 10)
	c.set([]byte("k2"), v(""), 20)
	got, size, ok := c.get([]byte("k1"))
	require.True(t, ok)
	require.Equal(t, int64(10), size)
	require.Equal(t, int64(2), got.ModRevision)
	c.set([]byte("k3"), v(""), 30) // rotates: k1..k3 are old
	require.Equal(t, 3, c.Len())
	_, _, ok = c.get([]byte("k2")) // back to the current generation
	require.True(t, ok)
	c.set([]byte("k4"), v(""), 40)
	c.set([]byte("k5"), v(""), 50) // rotates: k1, k3 dropped
	for key, want := range map[string]bool{"k1": false, "k3": false, "k2": true, "k4": true, "k5": true} {
		_, _, ok := c.get([]byte(key))
		require.Equal(t, want, ok, key)
	}
	c.Clear()
	require.Zero(t, c.Len())
	_, _, ok = c.get([]byte("k5"))
	require.False(t, ok)

	// The cache keeps its own copy of a value.
	buf := []byte("vv")
	c.set([]byte("k6"), &Version{Value: buf}, 1)
	buf[0] = 'x'
	got, _, _ = c.get([]byte("k6"))
	require.Equal(t, "vv", string(got.Value))
}
