package node

import (
	"context"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/anishathalye/porcupine"
	"github.com/stretchr/testify/require"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// Linearizability model: a register per key holding a string, "" when the
// key is absent. Every written value is unique, so a compare on
// mod_revision R is the same as a compare on the value written at R.

type linOpKind int

const (
	linGet linOpKind = iota
	linPut
	linCAS // put value if the register holds expect
)

type linInput struct {
	kind   linOpKind
	key    string
	value  string // put, cas: the value written
	expect string // cas: the value required ("" = absent)
	byRev  bool   // cas: compared on mod_revision (for descriptions only)
}

type linOutput struct {
	value     string // get: the value read; failed cas: the value seen
	succeeded bool   // cas
	unknown   bool   // the client got no answer: it may have applied
}

var registerModel = porcupine.Model{
	Partition: func(history []porcupine.Operation) [][]porcupine.Operation {
		byKey := map[string][]porcupine.Operation{}
		var keys []string
		for _, op := range history {
			k := op.Input.(linInput).key
			if _, ok := byKey[k]; !ok {
				keys = append(keys, k)
			}
			byKey[k] = append(byKey[k], op)
		}
		out := make([][]porcupine.Operation, 0, len(keys))
		for _, k := range keys {
			out = append(out, byKey[k])
		}
		return out
	},
	Init: func() any { return "" },
	Step: func(state, input, output any) (bool, any) {
		st, in, out := state.(string), input.(linInput), output.(linOutput)
		switch in.kind {
		case linGet:
			return out.value == st, st
		case linPut:
			return true, in.value
		case linCAS:
			if out.unknown {
				if st == in.expect {
					return true, in.value
				}
				return true, st
			}
			if out.succeeded {
				return st == in.expect, in.value
			}
			return st != in.expect && st == out.value, st
		}
		return false, st
	},
	DescribeOperation: func(input, output any) string {
		in, out := input.(linInput), output.(linOutput)
		res := ""
		switch {
		case out.unknown:
			res = "unknown"
		case in.kind == linGet:
			res = fmt.Sprintf("%q", out.value)
		case in.kind == linCAS && out.succeeded:
			res = "ok"
		case in.kind == linCAS:
			res = fmt.Sprintf("failed, saw %q", out.value)
		default:
			res = "ok"
		}
		switch in.kind {
		case linGet:
			return fmt.Sprintf("get(%s) -> %s", in.key, res)
		case linPut:
			return fmt.Sprintf("put(%s, %s) -> %s", in.key, in.value, res)
		default:
			on := "value"
			if in.byRev {
				on = "mod_rev"
			}
			return fmt.Sprintf("cas(%s, %s %q -> %s) -> %s", in.key, on, in.expect, in.value, res)
		}
	},
	DescribeState: func(state any) string { return fmt.Sprintf("%q", state.(string)) },
}

// linHistory collects operations from concurrent clients.
type linHistory struct {
	start time.Time
	mu    sync.Mutex
	ops   []porcupine.Operation
}

func (h *linHistory) now() int64 { return int64(time.Since(h.start)) }

func (h *linHistory) add(client int, in linInput, call int64, out linOutput, ret int64) {
	if out.unknown {
		ret = math.MaxInt64 // may take effect at any point after the call
	}
	h.mu.Lock()
	h.ops = append(h.ops, porcupine.Operation{ClientId: client, Input: in, Call: call, Output: out, Return: ret})
	h.mu.Unlock()
}

// linClient is one sequential client of the history, bound to one node.
type linClient struct {
	id   int
	cli  *clientv3.Client
	h    *linHistory
	rng  *rand.Rand
	seq  int
	seen map[string]struct {
		value string
		rev   int64
	} // last (value, mod_revision) this client read per key
}

func (c *linClient) step(keys []string) {
	key := keys[c.rng.IntN(len(keys))]
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	c.seq++
	val := fmt.Sprintf("c%d-%d", c.id, c.seq)
	call := c.h.now()
	switch r := c.rng.IntN(100); {
	case r < 40:
		in := linInput{kind: linGet, key: key}
		resp, err := c.cli.Get(ctx, key)
		ret := c.h.now()
		if err != nil {
			return // a failed read changed nothing
		}
		out := linOutput{}
		if len(resp.Kvs) == 1 {
			out.value = string(resp.Kvs[0].Value)
			c.seen[key] = struct {
				value string
				rev   int64
			}{out.value, resp.Kvs[0].ModRevision}
		}
		c.h.add(c.id, in, call, out, ret)
	case r < 70:
		in := linInput{kind: linPut, key: key, value: val}
		_, err := c.cli.Put(ctx, key, val)
		c.h.add(c.id, in, call, linOutput{unknown: err != nil}, c.h.now())
	default:
		in := linInput{kind: linCAS, key: key, value: val}
		var cmp clientv3.Cmp
		prev, ok := c.seen[key]
		switch {
		case !ok || prev.value == "":
			cmp = clientv3.Compare(clientv3.CreateRevision(key), "=", 0)
		case r < 85:
			in.expect, in.byRev = prev.value, true
			cmp = clientv3.Compare(clientv3.ModRevision(key), "=", prev.rev)
		default:
			in.expect = prev.value
			cmp = clientv3.Compare(clientv3.Value(key), "=", prev.value)
		}
		resp, err := c.cli.Txn(ctx).If(cmp).Then(clientv3.OpPut(key, val)).Else(clientv3.OpGet(key)).Commit()
		ret := c.h.now()
		out := linOutput{unknown: err != nil}
		if err == nil {
			out.succeeded = resp.Succeeded
			if !resp.Succeeded {
				if kvs := resp.Responses[0].GetResponseRange().Kvs; len(kvs) == 1 {
					out.value = string(kvs[0].Value)
				}
			}
		}
		c.h.add(c.id, in, call, out, ret)
	}
}

// TestLinearizability runs 9 clients (3 per node) doing gets, puts and
// compare-and-swap transactions on a few keys while the leader is stopped
// and restarted, and checks the history with porcupine.
func TestLinearizability(t *testing.T) {
	c := newTestCluster(t, 3)
	keys := []string{"lin/a", "lin/b", "lin/c"}
	const (
		perNode  = 3
		duration = 4 * time.Second
	)
	h := &linHistory{start: time.Now()}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for i := range perNode * len(c.members) {
		m := c.members[i%len(c.members)]
		cli, err := newTestClient(m.clientURL())
		require.NoError(t, err)
		t.Cleanup(func() { cli.Close() })
		lc := &linClient{id: i, cli: cli, h: h, rng: rand.New(rand.NewPCG(uint64(i), uint64(time.Now().UnixNano()))),
			seen: map[string]struct {
				value string
				rev   int64
			}{}}
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				lc.step(keys)
			}
		}()
	}

	// One leader stop and restart by default; RANGEKV_TEST_LIN_ROUNDS=n
	// runs n of them (a longer soak).
	rounds := 1
	if v := os.Getenv("RANGEKV_TEST_LIN_ROUNDS"); v != "" {
		fmt.Sscan(v, &rounds)
	}
	for range rounds {
		time.Sleep(duration / 4)
		lead := c.waitLeader()
		t.Logf("stopping leader %s", lead.name)
		c.stop(lead)
		time.Sleep(duration / 4)
		t.Logf("restarting %s", lead.name)
		c.restart(lead)
	}
	time.Sleep(duration / 2)
	close(stop)
	wg.Wait()

	h.mu.Lock()
	ops := h.ops
	h.mu.Unlock()
	counts := map[string]int{}
	for _, op := range ops {
		in, out := op.Input.(linInput), op.Output.(linOutput)
		kind := [...]string{"get", "put", "cas"}[in.kind]
		if out.unknown {
			kind += "-unknown"
		} else if in.kind == linCAS && out.succeeded {
			kind += "-ok"
		}
		counts[kind]++
	}
	t.Logf("history: %d operations %v", len(ops), counts)
	require.Greater(t, counts["cas-ok"], 0)
	require.Greater(t, counts["get"], 100)

	const limit = 20 * time.Second
	began := time.Now()
	res, info := porcupine.CheckOperationsVerbose(registerModel, ops, limit)
	took := time.Since(began)
	t.Logf("porcupine: %s in %v", res, took)
	if res != porcupine.Ok {
		f, err := os.CreateTemp("", "rangekv-linearizability-*.html")
		if err == nil {
			path := f.Name()
			f.Close()
			if err := porcupine.VisualizePath(registerModel, info, path); err == nil {
				t.Logf("visualization: %s", path)
			} else {
				t.Logf("visualization failed: %v", err)
			}
		}
	}
	switch res {
	case porcupine.Illegal:
		t.Fatalf("history of %d operations is not linearizable", len(ops))
	case porcupine.Unknown:
		t.Fatalf("porcupine could not decide within %v (took %v)", limit, took)
	}
}

// TestRegisterModelRejectsStaleRead checks the checker itself: a read that
// misses a write acknowledged before it began is reported Illegal, and
// an unknown-outcome write may explain a later read.
func TestRegisterModelRejectsStaleRead(t *testing.T) {
	put := func(client int, v string, call, ret int64, unknown bool) porcupine.Operation {
		if unknown {
			ret = math.MaxInt64
		}
		return porcupine.Operation{ClientId: client, Input: linInput{kind: linPut, key: "k", value: v},
			Call: call, Output: linOutput{unknown: unknown}, Return: ret}
	}
	get := func(client int, v string, call, ret int64) porcupine.Operation {
		return porcupine.Operation{ClientId: client, Input: linInput{kind: linGet, key: "k"},
			Call: call, Output: linOutput{value: v}, Return: ret}
	}
	cas := func(client int, expect, v string, ok bool, seen string, call, ret int64) porcupine.Operation {
		return porcupine.Operation{ClientId: client, Input: linInput{kind: linCAS, key: "k", value: v, expect: expect},
			Call: call, Output: linOutput{succeeded: ok, value: seen}, Return: ret}
	}
	stale := []porcupine.Operation{put(0, "a", 0, 10, false), put(0, "b", 20, 30, false), get(1, "a", 40, 50)}
	require.Equal(t, porcupine.Illegal, porcupine.CheckOperationsTimeout(registerModel, stale, time.Second))

	unknown := []porcupine.Operation{put(0, "a", 0, 10, false), put(0, "b", 20, 0, true), get(1, "b", 40, 50), get(1, "b", 60, 70)}
	require.Equal(t, porcupine.Ok, porcupine.CheckOperationsTimeout(registerModel, unknown, time.Second))

	doubleCAS := []porcupine.Operation{put(0, "a", 0, 10, false), cas(1, "a", "x", true, "", 20, 30), cas(2, "a", "y", true, "", 40, 50)}
	require.Equal(t, porcupine.Illegal, porcupine.CheckOperationsTimeout(registerModel, doubleCAS, time.Second))

	failedCAS := []porcupine.Operation{put(0, "a", 0, 10, false), cas(1, "a", "x", true, "", 20, 30), cas(2, "a", "y", false, "x", 40, 50), get(0, "x", 60, 70)}
	require.Equal(t, porcupine.Ok, porcupine.CheckOperationsTimeout(registerModel, failedCAS, time.Second))
}
