package placement

import (
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/rangekv/rangekv/txnproto"
)

// TestSupersedes pins the record order: range ID first, then generation.
func TestSupersedes(t *testing.T) {
	d := func(id, gen uint64) *txnproto.RangeDescriptor {
		return &txnproto.RangeDescriptor{RangeId: id, Generation: gen}
	}
	require.True(t, Supersedes(d(3, 0), d(2, 5)))
	require.True(t, Supersedes(d(2, 6), d(2, 5)))
	require.False(t, Supersedes(d(2, 5), d(2, 5)))
	require.False(t, Supersedes(d(2, 9), d(3, 0)))
}
