//go:build linux

package robustness

import (
	"context"
	"fmt"
	"math"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/anishathalye/porcupine"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// History collects the operations of concurrent clients, with call and
// return times in nanoseconds since its start.
type History struct {
	start time.Time
	mu    sync.Mutex
	ops   []porcupine.Operation
}

// NewHistory starts an empty history.
func NewHistory() *History { return &History{start: time.Now()} }

func (h *History) now() int64 { return int64(time.Since(h.start)) }

func (h *History) add(client int, in Input, call int64, out Output, ret int64) {
	if out.Unknown {
		ret = math.MaxInt64 // it may take effect at any point after the call
	}
	h.mu.Lock()
	h.ops = append(h.ops, porcupine.Operation{ClientId: client, Input: in, Call: call, Output: out, Return: ret})
	h.mu.Unlock()
}

// Operations returns the recorded operations.
func (h *History) Operations() []porcupine.Operation {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]porcupine.Operation(nil), h.ops...)
}

// Counts tallies the operations by kind and outcome ("cas-ok",
// "put-unknown", ...).
func (h *History) Counts() map[string]int {
	counts := map[string]int{}
	for _, op := range h.Operations() {
		in, out := op.Input.(Input), op.Output.(Output)
		kind := in.Kind.String()
		switch {
		case out.Unknown:
			kind += "-unknown"
		case (in.Kind == OpCAS || in.Kind == OpCAS2) && out.Succeeded:
			kind += "-ok"
		}
		counts[kind]++
	}
	return counts
}

// Client is one sequential client of the etcd traffic profile.
type Client struct {
	ID      int
	KV      *clientv3.Client
	History *History
	Rand    *rand.Rand
	// Timeout bounds each request.
	Timeout time.Duration
	// Profile is the traffic: ProfileEtcd (default) or ProfileKubernetes.
	Profile string
	// Stale collects serializable reads, checked against the watch
	// history (CheckStaleReads) since porcupine cannot place them.
	Stale   *StaleReads
	seq     int
	seen    State
	seenRev [NumKeys]int64 // mod_revision of seen, 0 when absent
}

// Step issues one random operation and records it. A failed read is not
// recorded (it changed nothing); a failed write is recorded with an
// unknown outcome.
func (c *Client) Step(ctx context.Context) {
	ctx, cancel := context.WithTimeout(ctx, c.Timeout)
	defer cancel()
	c.seq++
	val := c.val
	if c.Profile == ProfileKubernetes {
		c.stepKubernetes(ctx)
		return
	}
	h := c.History
	call := h.now()
	i := c.Rand.IntN(NumKeys)
	switch r := c.Rand.IntN(100); {
	case r < 5:
		// A stale get: served by whichever node the client is on.
		resp, err := c.KV.Get(ctx, Keys[i], clientv3.WithSerializable())
		if err == nil {
			c.Stale.add(resp.Header.Revision, Keys[i:i+1], resp.Kvs)
		}
	case r < 20:
		c.get(ctx, i)
	case r < 35:
		_ = c.readAll(ctx)
	case r < 55:
		in := Input{Kind: OpPut, I: i, Value: [2]string{val(0)}}
		resp, err := c.KV.Put(ctx, Keys[i], in.Value[0])
		out := Output{Unknown: err != nil}
		if err == nil {
			out.Rev = resp.Header.Revision
		}
		h.add(c.ID, in, call, out, h.now())
	case r < 60:
		_, err := c.KV.Delete(ctx, Keys[i])
		h.add(c.ID, Input{Kind: OpDelete, I: i}, call, Output{Unknown: err != nil}, h.now())
	case r < 80:
		in := Input{Kind: OpCAS, I: i, Value: [2]string{val(0)}, Expect: [2]string{c.seen[i]}}
		resp, err := c.KV.Txn(ctx).If(c.compare(i)).Then(clientv3.OpPut(Keys[i], in.Value[0])).
			Else(clientv3.OpGet(Keys[i])).Commit()
		h.add(c.ID, in, call, casOutput(resp, err, i, -1), h.now())
	case r < 97:
		// Two keys of different ranges.
		j := (i + 2 + 2*c.Rand.IntN(NumKeys/2-1)) % NumKeys
		in := Input{Kind: OpCAS2, I: i, J: j, Value: [2]string{val(0), val(1)}, Expect: [2]string{c.seen[i], c.seen[j]}}
		resp, err := c.KV.Txn(ctx).If(c.compare(i), c.compare(j)).
			Then(clientv3.OpPut(Keys[i], in.Value[0]), clientv3.OpPut(Keys[j], in.Value[1])).
			Else(clientv3.OpGet(Keys[i]), clientv3.OpGet(Keys[j])).Commit()
		h.add(c.ID, in, call, casOutput(resp, err, i, j), h.now())
	default:
		// Every model key (four ranges), and none of the bank's accounts.
		_, err := c.KV.Delete(ctx, "a/", clientv3.WithRange("x"))
		h.add(c.ID, Input{Kind: OpDeleteAll}, call, Output{Unknown: err != nil}, h.now())
	}
}

// valueOf is the unique value a client writes as the n-th value of its
// seq-th operation.
func (c *Client) valueOf(seq, n int) string { return fmt.Sprintf("c%d-%d-%d", c.ID, seq, n) }

// get reads key i linearizably and records it; a failed read is not
// recorded.
func (c *Client) get(ctx context.Context, i int) {
	call := c.History.now()
	resp, err := c.KV.Get(ctx, Keys[i])
	if err != nil {
		return
	}
	var out Output
	c.seenRev[i] = 0
	if len(resp.Kvs) == 1 {
		out.Values[i] = string(resp.Kvs[0].Value)
		c.seenRev[i] = resp.Kvs[0].ModRevision
	}
	c.seen[i] = out.Values[i]
	c.History.add(c.ID, Input{Kind: OpGet, I: i}, call, out, c.History.now())
}

// readAll reads every key in one multi-range transaction and records it;
// a failed read is not recorded.
func (c *Client) readAll(ctx context.Context) error {
	call := c.History.now()
	ops := make([]clientv3.Op, 0, NumKeys)
	for _, k := range Keys {
		ops = append(ops, clientv3.OpGet(k))
	}
	resp, err := c.KV.Txn(ctx).Then(ops...).Commit()
	if err != nil {
		return err
	}
	var out Output
	for n, r := range resp.Responses {
		c.seenRev[n] = 0
		if kvs := r.GetResponseRange().Kvs; len(kvs) == 1 {
			out.Values[n] = string(kvs[0].Value)
			c.seenRev[n] = kvs[0].ModRevision
		}
	}
	c.seen = out.Values
	c.History.add(c.ID, Input{Kind: OpReadAll}, call, out, c.History.now())
	return nil
}

// compare is the condition that key i still holds what the client last
// saw: its mod_revision (the model compares values, which are unique, so
// the two agree), or its absence.
func (c *Client) compare(i int) clientv3.Cmp {
	if c.seen[i] == "" {
		return clientv3.Compare(clientv3.CreateRevision(Keys[i]), "=", 0)
	}
	return clientv3.Compare(clientv3.ModRevision(Keys[i]), "=", c.seenRev[i])
}

// casOutput records a CAS's outcome; j < 0 for a one-key CAS.
func casOutput(resp *clientv3.TxnResponse, err error, i, j int) Output {
	out := Output{Unknown: err != nil}
	if err != nil || resp.Succeeded {
		out.Succeeded = err == nil
		if err == nil {
			out.Rev = resp.Header.Revision
		}
		return out
	}
	for n, k := range []int{i, j} {
		if k < 0 {
			continue
		}
		if kvs := resp.Responses[n].GetResponseRange().Kvs; len(kvs) == 1 {
			out.Values[k] = string(kvs[0].Value)
		}
	}
	return out
}
