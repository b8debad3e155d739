//go:build linux

package robustness

import (
	"context"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/rangekv/rangekv/bench"
)

// The traffic profiles.
const (
	// ProfileEtcd is etcd's robustness traffic: gets, stale gets,
	// multi-range reads, puts, deletes, CAS on one and on two ranges,
	// deletes over every range.
	ProfileEtcd = "etcd"
	// ProfileKubernetes is kube-apiserver's traffic over one resource
	// whose objects lie in four ranges: gets, paged lists (linearizable
	// and stale), creates, updates and deletes as transactions comparing
	// the object's mod_revision, and informers that list, then watch from
	// the list's revision.
	ProfileKubernetes = "kubernetes"
)

// Profiles are the traffic profiles a run can use.
var Profiles = []string{ProfileEtcd, ProfileKubernetes}

// The resource: every model key lies in [resourceStart, resourceEnd), over
// the four ranges, and nothing else does.
const (
	resourceStart = "a/"
	resourceEnd   = "x"
	// listPageSize is the limit of each page of a list (kube-apiserver
	// pages with --limit; small here so a list crosses ranges in pages).
	listPageSize = 3
)

// listResource reads every object of the resource in pages of
// listPageSize: the first page at the current revision (linearizable
// unless serializable), the following ones at the first page's revision,
// as kube-apiserver continues a list. It returns the objects and that
// revision.
func listResource(ctx context.Context, kv *clientv3.Client, serializable bool) ([]*mvccpb.KeyValue, int64, error) {
	var opts []clientv3.OpOption
	if serializable {
		opts = append(opts, clientv3.WithSerializable())
	}
	kvs, rev, _, err := bench.ListPaged(ctx, kv, resourceStart, resourceEnd, listPageSize, opts...)
	return kvs, rev, err
}

// keyIndex maps a model key to its index in Keys.
var keyIndex = func() map[string]int {
	m := map[string]int{}
	for i, k := range Keys {
		m[k] = i
	}
	return m
}()

// stepKubernetes issues one operation of the Kubernetes profile and
// records it. Creates, updates and deletes are CAS operations in the
// model (a delete writes ""); a list is a read of every key.
func (c *Client) stepKubernetes(ctx context.Context) {
	h := c.History
	call := h.now()
	i := c.Rand.IntN(NumKeys)
	switch r := c.Rand.IntN(100); {
	case r < 10:
		c.get(ctx, i)
	case r < 35:
		kvs, _, err := listResource(ctx, c.KV, false)
		if err != nil {
			return
		}
		var out Output
		c.seenRev = [NumKeys]int64{}
		for _, kv := range kvs {
			n := keyIndex[string(kv.Key)]
			out.Values[n] = string(kv.Value)
			c.seenRev[n] = kv.ModRevision
		}
		c.seen = out.Values
		h.add(c.ID, Input{Kind: OpReadAll}, call, out, h.now())
	case r < 40:
		// A stale list (kube-apiserver's resourceVersion="0" falls
		// through to a serializable read when its cache is off).
		kvs, rev, err := listResource(ctx, c.KV, true)
		if err == nil {
			c.Stale.add(rev, Keys[:], kvs)
		}
	case r < 55:
		// Create: only if the object does not exist.
		c.kubeWrite(ctx, call, i, true, c.val(0))
	case r < 90:
		// Update, retried once with the object the failed compare read
		// (kube-apiserver's GuaranteedUpdate).
		if c.seen[i] == "" {
			c.kubeWrite(ctx, call, i, true, c.val(0))
			return
		}
		if !c.kubeWrite(ctx, call, i, false, c.val(0)) && c.seen[i] != "" {
			c.kubeWrite(ctx, h.now(), i, false, c.val(1))
		}
	default:
		if c.seen[i] == "" {
			return
		}
		c.kubeWrite(ctx, call, i, false, "")
	}
}

// val is a unique value for the client's current operation.
func (c *Client) val(n int) string { return c.valueOf(c.seq, n) }

// kubeWrite writes value ("" deletes) to key i if it still holds what the
// client last saw (create: if it does not exist), reading it otherwise,
// and records the CAS. It reports whether the compare held; a failed
// compare updates what the client has seen.
func (c *Client) kubeWrite(ctx context.Context, call int64, i int, create bool, value string) bool {
	expect := c.seen[i]
	cmp := clientv3.Compare(clientv3.ModRevision(Keys[i]), "=", c.seenRev[i])
	if create {
		expect = ""
		cmp = clientv3.Compare(clientv3.CreateRevision(Keys[i]), "=", 0)
	}
	op := clientv3.OpPut(Keys[i], value)
	if value == "" {
		op = clientv3.OpDelete(Keys[i])
	}
	in := Input{Kind: OpCAS, I: i, Value: [2]string{value}, Expect: [2]string{expect}}
	resp, err := c.KV.Txn(ctx).If(cmp).Then(op).Else(clientv3.OpGet(Keys[i])).Commit()
	c.History.add(c.ID, in, call, casOutput(resp, err, i, -1), c.History.now())
	if err != nil || resp.Succeeded {
		if err == nil {
			c.seen[i], c.seenRev[i] = value, 0
			if value != "" {
				c.seenRev[i] = resp.Header.Revision
			}
		}
		return err == nil
	}
	c.seen[i], c.seenRev[i] = "", 0
	if kvs := resp.Responses[0].GetResponseRange().Kvs; len(kvs) == 1 {
		c.seen[i], c.seenRev[i] = string(kvs[0].Value), kvs[0].ModRevision
	}
	return false
}

// StaleRead is one serializable read: the keys it covered and the values
// it returned (absent keys are missing), at its header revision.
type StaleRead struct {
	Rev    int64
	Keys   []string
	Values map[string]string
}

// StaleReads collects the serializable reads of a run.
type StaleReads struct {
	mu    sync.Mutex
	Reads []StaleRead
}

func (s *StaleReads) add(rev int64, keys []string, kvs []*mvccpb.KeyValue) {
	r := StaleRead{Rev: rev, Keys: keys, Values: map[string]string{}}
	for _, kv := range kvs {
		r.Values[string(kv.Key)] = string(kv.Value)
	}
	s.mu.Lock()
	s.Reads = append(s.Reads, r)
	s.mu.Unlock()
}

// Informer is kube-apiserver's reflector over the resource: it lists,
// then watches from the revision after the list, asking for progress
// notifications (bookmarks) as the watch cache does; a watch that fails
// is resumed after its last revision, and a compacted one relists.
type Informer struct {
	Name   string
	Epochs []*InformerEpoch
	last   atomic.Int64 // revision of the last event delivered
}

// InformerEpoch is one list and the watch that followed it.
type InformerEpoch struct {
	ListRev int64
	List    map[string]string
	// Responses are the watch's responses with events; Bookmarks the
	// progress notifications, each with the number of event responses
	// delivered before it.
	Responses [][]Event
	Bookmarks []Bookmark
	Err       string
}

// Bookmark is a progress notification: every event at or below Rev has
// been delivered.
type Bookmark struct {
	After int
	Rev   int64
}

// Run lists and watches until ctx ends.
func (inf *Informer) Run(ctx context.Context, kv *clientv3.Client) {
	for ctx.Err() == nil {
		kvs, rev, err := listResource(ctx, kv, false)
		if err != nil {
			select {
			case <-ctx.Done():
			case <-time.After(100 * time.Millisecond):
			}
			continue
		}
		ep := &InformerEpoch{ListRev: rev, List: map[string]string{}}
		for _, kv := range kvs {
			ep.List[string(kv.Key)] = string(kv.Value)
		}
		inf.Epochs = append(inf.Epochs, ep)
		inf.last.Store(rev)
		ep.watch(ctx, kv, &inf.last)
	}
}

// watch follows the resource from the epoch's list until ctx ends or the
// watch is compacted.
func (ep *InformerEpoch) watch(ctx context.Context, kv *clientv3.Client, last *atomic.Int64) {
	next := ep.ListRev + 1
	for ctx.Err() == nil {
		wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
		wch := kv.Watch(wctx, resourceStart, clientv3.WithRange(resourceEnd), clientv3.WithRev(next))
		tick := time.NewTicker(300 * time.Millisecond)
		compacted := false
	stream:
		for {
			select {
			case <-tick.C:
				_ = kv.RequestProgress(wctx)
			case resp, ok := <-wch:
				if !ok {
					break stream
				}
				if err := resp.Err(); err != nil {
					ep.Err = err.Error()
					compacted = resp.CompactRevision != 0
					break stream
				}
				if resp.IsProgressNotify() {
					ep.Bookmarks = append(ep.Bookmarks, Bookmark{After: len(ep.Responses), Rev: resp.Header.Revision})
					continue
				}
				if evs := eventsOf(resp); len(evs) > 0 {
					ep.Responses = append(ep.Responses, evs)
					next = evs[len(evs)-1].Rev + 1
					last.Store(evs[len(evs)-1].Rev)
				}
			}
		}
		tick.Stop()
		cancel()
		if compacted {
			return
		}
	}
}

// eventHistory is the sequence of events the run's watchers agreed on, in
// revision order: the reference the stale reads and the informers are
// checked against. Model keys and bank accounts are created after the
// first revision the watchers cover, so before it every key is absent.
type eventHistory []Event

// state returns every key's value after the events at or below rev,
// restricted to keys (all keys when nil).
func (h eventHistory) state(rev int64, keys []string) map[string]string {
	st := map[string]string{}
	for _, ev := range h {
		if ev.Rev > rev {
			break
		}
		if keys != nil && !slices.Contains(keys, ev.Key) {
			continue
		}
		if ev.Delete {
			delete(st, ev.Key)
		} else {
			st[ev.Key] = ev.Value
		}
	}
	return st
}
