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

// A model of a few keys spread over two ranges, for transactions: the
// state is every key's value ("" when absent), and operations read all
// keys in one multi-range txn, put one key, swap two keys' values under
// compares on both (a cross-range CAS), or delete every key.

var txnKeys = [4]string{"a1", "b1", "x2", "y2"} // split at "m"

type txnOpKind int

const (
	txnReadAll txnOpKind = iota
	txnPut
	txnCAS2
	txnDeleteAll
)

type txnInput struct {
	kind   txnOpKind
	i, j   int       // cas2: the keys; put: i
	value  [2]string // put: value[0]; cas2: the values written to i and j
	expect [2]string // cas2: the values required at i and j
}

type txnOutput struct {
	values    [4]string // readAll; failed cas2: values[i], values[j] seen
	succeeded bool
	unknown   bool
}

var txnModel = porcupine.Model{
	Init: func() any { return [4]string{} },
	Step: func(state, input, output any) (bool, any) {
		st, in, out := state.([4]string), input.(txnInput), output.(txnOutput)
		switch in.kind {
		case txnReadAll:
			return out.values == st, st
		case txnPut:
			st[in.i] = in.value[0]
			return true, st
		case txnDeleteAll:
			return true, [4]string{}
		}
		holds := st[in.i] == in.expect[0] && st[in.j] == in.expect[1]
		next := st
		next[in.i], next[in.j] = in.value[0], in.value[1]
		switch {
		case out.unknown && holds:
			return true, next
		case out.unknown:
			return true, st
		case out.succeeded:
			return holds, next
		}
		return !holds && out.values[in.i] == st[in.i] && out.values[in.j] == st[in.j], st
	},
	DescribeOperation: func(input, output any) string {
		in, out := input.(txnInput), output.(txnOutput)
		switch in.kind {
		case txnReadAll:
			return fmt.Sprintf("readAll -> %q", out.values)
		case txnPut:
			return fmt.Sprintf("put(%s, %s) unknown=%v", txnKeys[in.i], in.value[0], out.unknown)
		case txnDeleteAll:
			return fmt.Sprintf("deleteAll unknown=%v", out.unknown)
		}
		return fmt.Sprintf("cas2(%s=%q & %s=%q -> %q, %q) ok=%v unknown=%v saw %q", txnKeys[in.i], in.expect[0],
			txnKeys[in.j], in.expect[1], in.value[0], in.value[1], out.succeeded, out.unknown, out.values)
	},
	DescribeState: func(state any) string { return fmt.Sprintf("%q", state.([4]string)) },
}

// txnClient is one sequential client of the history.
type txnClient struct {
	id   int
	cli  *clientv3.Client
	h    *linHistory
	rng  *rand.Rand
	seq  int
	seen [4]string
}

func (c *txnClient) add(in txnInput, call int64, out txnOutput, ret int64) {
	if out.unknown {
		ret = math.MaxInt64
	}
	c.h.mu.Lock()
	c.h.ops = append(c.h.ops, porcupine.Operation{ClientId: c.id, Input: in, Call: call, Output: out, Return: ret})
	c.h.mu.Unlock()
}

func (c *txnClient) step() {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	c.seq++
	val := func(n int) string { return fmt.Sprintf("c%d-%d-%d", c.id, c.seq, n) }
	call := c.h.now()
	switch r := c.rng.IntN(100); {
	case r < 35:
		ops := make([]clientv3.Op, 0, 4)
		for _, k := range txnKeys {
			ops = append(ops, clientv3.OpGet(k))
		}
		resp, err := c.cli.Txn(ctx).Then(ops...).Commit()
		ret := c.h.now()
		if err != nil {
			return
		}
		var out txnOutput
		for i, r := range resp.Responses {
			if kvs := r.GetResponseRange().Kvs; len(kvs) == 1 {
				out.values[i] = string(kvs[0].Value)
			}
		}
		c.seen = out.values
		c.add(txnInput{kind: txnReadAll}, call, out, ret)
	case r < 55:
		in := txnInput{kind: txnPut, i: c.rng.IntN(4), value: [2]string{val(0)}}
		_, err := c.cli.Put(ctx, txnKeys[in.i], in.value[0])
		c.add(in, call, txnOutput{unknown: err != nil}, c.h.now())
	case r < 97:
		// One key on each side of the split.
		in := txnInput{kind: txnCAS2, i: c.rng.IntN(2), j: 2 + c.rng.IntN(2), value: [2]string{val(0), val(1)}}
		in.expect = [2]string{c.seen[in.i], c.seen[in.j]}
		cmp := func(k int, want string) clientv3.Cmp {
			if want == "" {
				return clientv3.Compare(clientv3.CreateRevision(txnKeys[k]), "=", 0)
			}
			return clientv3.Compare(clientv3.Value(txnKeys[k]), "=", want)
		}
		resp, err := c.cli.Txn(ctx).If(cmp(in.i, in.expect[0]), cmp(in.j, in.expect[1])).
			Then(clientv3.OpPut(txnKeys[in.i], in.value[0]), clientv3.OpPut(txnKeys[in.j], in.value[1])).
			Else(clientv3.OpGet(txnKeys[in.i]), clientv3.OpGet(txnKeys[in.j])).Commit()
		ret := c.h.now()
		out := txnOutput{unknown: err != nil}
		if err == nil {
			out.succeeded = resp.Succeeded
			if !resp.Succeeded {
				for n, k := range []int{in.i, in.j} {
					if kvs := resp.Responses[n].GetResponseRange().Kvs; len(kvs) == 1 {
						out.values[k] = string(kvs[0].Value)
					}
				}
			}
		}
		c.add(in, call, out, ret)
	default:
		_, err := c.cli.Delete(ctx, "", clientv3.WithFromKey())
		c.add(txnInput{kind: txnDeleteAll}, call, txnOutput{unknown: err != nil}, c.h.now())
	}
}

// TestTxnLinearizability runs 6 clients (2 per node) doing multi-range
// reads, puts, cross-range compare-and-swaps and deletes over keys of two
// ranges while a range's leader is stopped and restarted, and checks the
// history with porcupine.
func TestTxnLinearizability(t *testing.T) {
	c := newTestCluster(t, 3)
	lead := c.waitLeader()
	_, _, err := lead.node().splitAt(ctxT(t, testWait), []byte("m"))
	require.NoError(t, err)
	const duration = 4 * time.Second
	h := &linHistory{start: time.Now()}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for i := range 2 * len(c.members) {
		m := c.members[i%len(c.members)]
		cli, err := newTestClient(m.clientURL())
		require.NoError(t, err)
		t.Cleanup(func() { cli.Close() })
		tc := &txnClient{id: i, cli: cli, h: h, rng: rand.New(rand.NewPCG(uint64(i), uint64(time.Now().UnixNano())))}
		wg.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				tc.step()
			}
		})
	}
	rounds := 1
	if v := os.Getenv("RANGEKV_TEST_LIN_ROUNDS"); v != "" {
		fmt.Sscan(v, &rounds)
	}
	for range rounds {
		time.Sleep(duration / 4)
		lead := c.waitLeader()
		t.Logf("stopping %s", lead.name)
		c.stop(lead)
		time.Sleep(duration / 4)
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
		in, out := op.Input.(txnInput), op.Output.(txnOutput)
		kind := [...]string{"readAll", "put", "cas2", "deleteAll"}[in.kind]
		switch {
		case out.unknown:
			kind += "-unknown"
		case in.kind == txnCAS2 && out.succeeded:
			kind += "-ok"
		}
		counts[kind]++
	}
	t.Logf("history: %d operations %v", len(ops), counts)
	require.Greater(t, counts["cas2-ok"], 0)
	require.Greater(t, counts["readAll"], 20)

	const limit = 30 * time.Second
	res, info := porcupine.CheckOperationsVerbose(txnModel, ops, limit)
	t.Logf("porcupine: %s", res)
	if res != porcupine.Ok {
		if f, err := os.CreateTemp("", "rangekv-txn-linearizability-*.html"); err == nil {
			f.Close()
			if porcupine.VisualizePath(txnModel, info, f.Name()) == nil {
				t.Logf("visualization: %s", f.Name())
			}
		}
	}
	require.Equal(t, porcupine.Ok, res, "history of %d operations", len(ops))
}

// TestTxnModelRejectsTornSwap checks the checker: a read seeing one half
// of a successful swap is Illegal.
func TestTxnModelRejectsTornSwap(t *testing.T) {
	swap := porcupine.Operation{ClientId: 0, Input: txnInput{kind: txnCAS2, i: 0, j: 2, value: [2]string{"p", "q"}},
		Call: 0, Output: txnOutput{succeeded: true}, Return: 10}
	torn := porcupine.Operation{ClientId: 1, Input: txnInput{kind: txnReadAll}, Call: 20,
		Output: txnOutput{values: [4]string{"p", "", "", ""}}, Return: 30}
	require.Equal(t, porcupine.Illegal, porcupine.CheckOperationsTimeout(txnModel, []porcupine.Operation{swap, torn}, time.Second))
	whole := torn
	whole.Output = txnOutput{values: [4]string{"p", "", "q", ""}}
	require.Equal(t, porcupine.Ok, porcupine.CheckOperationsTimeout(txnModel, []porcupine.Operation{swap, whole}, time.Second))
}
