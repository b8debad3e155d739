package rangeraft

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.etcd.io/etcd/api/v3/mvccpb"
)

// TestFeedPark checks the parking contract: a registration made against
// the current wait channel fires once on the next change; one made
// against a stale channel is refused; Unpark drops it; a key registered
// twice fires once.
func TestFeedPark(t *testing.T) {
	f := NewFeed(10, 100)
	woke := make(chan string, 10)
	wake := func(name string) func() { return func() { woke <- name } }
	expect := func(want ...string) {
		t.Helper()
		var got []string
		for range want {
			select {
			case n := <-woke:
				got = append(got, n)
			case <-time.After(5 * time.Second):
				t.Fatalf("woke %v, want %v", got, want)
			}
		}
		require.ElementsMatch(t, want, got)
		select {
		case n := <-woke:
			t.Fatalf("unexpected extra wake of %s", n)
		case <-time.After(20 * time.Millisecond):
		}
	}

	_, _, _, wait := f.Since(10, 0)
	require.True(t, f.Park("a", wait, wake("a")))
	require.True(t, f.Park("b", wait, wake("b")))
	require.True(t, f.Park("b", wait, wake("b"))) // same key: once
	require.True(t, f.Park("c", wait, wake("c")))
	f.Unpark("c")
	f.Publish(11, []*mvccpb.Event{{}})
	expect("a", "b")

	// The old channel is stale now.
	require.False(t, f.Park("a", wait, wake("a")))
	_, _, _, wait = f.Since(11, 0)
	require.True(t, f.Park("a", wait, wake("a")))
	f.Poke()
	expect("a")
	_, _, _, wait = f.Since(11, 0)
	require.True(t, f.Park("a", wait, wake("a")))
	f.Reset(20)
	expect("a")
}

// BenchmarkFeedPublishFullWindow publishes one-event entries into a feed
// whose window is full, as a busy range's feed is after its first
// maxEvents writes.
func BenchmarkFeedPublishFullWindow(b *testing.B) {
	const window = 100_000
	f := NewFeed(0, window)
	ev := []*mvccpb.Event{{Type: mvccpb.Event_PUT, Kv: &mvccpb.KeyValue{Key: []byte("k")}}}
	rev := int64(0)
	for range window {
		rev++
		f.Publish(rev, ev)
	}
	b.ResetTimer()
	for range b.N {
		rev++
		f.Publish(rev, ev)
	}
}
