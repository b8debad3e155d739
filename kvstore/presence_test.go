package kvstore

import (
	"fmt"
	"testing"

	"github.com/cockroachdb/pebble/v2"
	"github.com/stretchr/testify/require"
)

// TestKeyPresence checks that the set loaded from an engine holds every
// stored key of both keyspaces (escaped bytes, tombstones and several
// versions included) and no other, and that writes and raw snapshot keys
// add theirs.
func TestKeyPresence(t *testing.T) {
	s := newTestStore(t)
	stored := []string{"a", "a\x00", "a\x00b", "b", "\x00", "\xff\xff"}
	for i, k := range stored {
		s.put(int64(10*i+1), k, "v")
		s.put(int64(10*i+2), k, "w")
	}
	s.del(100, "b", "")
	b := s.db.NewBatch()
	require.NoError(t, b.Set(EncodeMVCCKey(nil, MetaSpanKey([]byte("desc")), 5), EncodeVersion(nil, &Version{Value: []byte("d")}), nil))
	require.NoError(t, b.Set(RangeStatsKey(7), []byte("local"), nil))
	require.NoError(t, b.Commit(pebble.Sync))

	p, err := LoadKeyPresence(s.db)
	require.NoError(t, err)
	require.Equal(t, len(stored)+1, p.Len())
	for _, k := range stored {
		require.True(t, p.MayContain(UserSpanKey([]byte(k))), "%q", k)
	}
	require.True(t, p.MayContain(MetaSpanKey([]byte("desc"))))
	for _, k := range []string{"", "a\x00\x00", "ab", "c", "desc"} {
		require.False(t, p.MayContain(UserSpanKey([]byte(k))), "%q", k)
	}

	// A write through a WriteBatch adds its key before it commits.
	s.presence = p
	s.put(200, "c", "v")
	require.True(t, p.MayContain(UserSpanKey([]byte("c"))))
	got, err := MVCCGet(s.db, UserSpanKey([]byte("c")), 0)
	require.NoError(t, err)
	require.EqualValues(t, 1, got.Version)

	// A snapshot's raw keys: MVCC keys are added, local keys ignored,
	// malformed MVCC keys refused.
	require.NoError(t, p.AddEngineKey(EncodeMVCCKey(nil, UserSpanKey([]byte("snap")), 3)))
	require.True(t, p.MayContain(UserSpanKey([]byte("snap"))))
	require.NoError(t, p.AddEngineKey(RangeStatsKey(7)))
	require.ErrorIs(t, p.AddEngineKey(UserSpanKey([]byte("short"))), ErrBadMVCCKey)
	require.Equal(t, len(stored)+3, p.Len())
}

// TestKeyPresenceLongKey checks a key longer than MayContain's stack
// buffer.
func TestKeyPresenceLongKey(t *testing.T) {
	s := newTestStore(t)
	long := fmt.Sprintf("%0300d", 7)
	s.put(1, long, "v")
	p, err := LoadKeyPresence(s.db)
	require.NoError(t, err)
	require.True(t, p.MayContain(UserSpanKey([]byte(long))))
	require.False(t, p.MayContain(UserSpanKey([]byte(long+"x"))))
}
