package placement

import (
	"testing"

	"github.com/stretchr/testify/require"
)

func TestRouteHintRoundTrip(t *testing.T) {
	h := RouteHint{RangeID: 42, Generation: 7, LeaderNode: 0x8211f1d0f64f3269}
	v := FormatRouteHint(h)
	require.Equal(t, "42 7 8211f1d0f64f3269", v)
	got, err := ParseRouteHint(v)
	require.NoError(t, err)
	require.Equal(t, h, got)
}

func TestParseRouteHintMalformed(t *testing.T) {
	for _, v := range []string{"", "1 2", "1 2 3 4", "x 2 3", "1 -2 3", "1 2 zz", "18446744073709551616 1 1"} {
		_, err := ParseRouteHint(v)
		require.Error(t, err, "%q", v)
	}
}

func FuzzParseRouteHint(f *testing.F) {
	f.Add("42 7 8211f1d0f64f3269")
	f.Add("")
	f.Fuzz(func(t *testing.T, v string) {
		h, err := ParseRouteHint(v)
		if err != nil {
			return
		}
		again, err := ParseRouteHint(FormatRouteHint(h))
		require.NoError(t, err)
		require.Equal(t, h, again)
	})
}
