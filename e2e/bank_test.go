package e2e

import (
	"context"
	"fmt"
	"math/rand/v2"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// The bank test (docs/transactions.md): accounts spread over ranges,
// transfers between them as cross-range transactions that compare both
// accounts' mod_revisions, and auditors that read every account in one
// snapshot and check the total never changes, while nodes are SIGKILLed
// and restarted and ranges split under the load.

const (
	bankAccounts = 16
	bankInitial  = 100
)

func bankKey(i int) string { return fmt.Sprintf("acct/%02d", i) }

// bankAudit reads every account with one request and returns the total
// and a description of anything wrong with the snapshot.
func bankAudit(ctx context.Context, cli *clientv3.Client, opts ...clientv3.OpOption) (int, string, error) {
	resp, err := cli.Get(ctx, "acct/", append([]clientv3.OpOption{clientv3.WithPrefix()}, opts...)...)
	if err != nil {
		return 0, "", err
	}
	if len(resp.Kvs) != bankAccounts && opts != nil {
		// A serializable read may be stale (etcd's semantics), from
		// before every account existed: it must then be exactly the
		// linearizable snapshot at its revision.
		lin, err := cli.Get(ctx, "acct/", clientv3.WithPrefix(), clientv3.WithRev(resp.Header.Revision))
		if err != nil {
			return 0, "", err
		}
		if fmt.Sprint(lin.Kvs) != fmt.Sprint(resp.Kvs) {
			return 0, fmt.Sprintf("serializable snapshot at %d differs from the linearizable one: %v vs %v",
				resp.Header.Revision, resp.Kvs, lin.Kvs), nil
		}
		return 0, "", nil
	}
	if len(resp.Kvs) != bankAccounts {
		var present []string
		for _, kv := range resp.Kvs {
			present = append(present, string(kv.Key))
		}
		detail := ""
		for i := range bankAccounts {
			k := bankKey(i)
			if !slices.Contains(present, k) {
				s, err1 := cli.Get(ctx, k, clientv3.WithRev(resp.Header.Revision), clientv3.WithSerializable())
				l, err2 := cli.Get(ctx, k, clientv3.WithRev(resp.Header.Revision))
				detail += fmt.Sprintf(" %s: serializable %v %v, linearizable %v %v;", k, s.Kvs, err1, l.Kvs, err2)
			}
		}
		return 0, fmt.Sprintf("%d accounts at revision %d: %v%s", len(resp.Kvs), resp.Header.Revision, present, detail), nil
	}
	total := 0
	for _, kv := range resp.Kvs {
		if kv.ModRevision > resp.Header.Revision {
			return 0, fmt.Sprintf("%s modified at %d after the read's revision %d", kv.Key, kv.ModRevision, resp.Header.Revision), nil
		}
		n, err := strconv.Atoi(string(kv.Value))
		if err != nil {
			return 0, fmt.Sprintf("%s holds %q", kv.Key, kv.Value), nil
		}
		total += n
	}
	if total != bankAccounts*bankInitial {
		var accts []string
		for _, kv := range resp.Kvs {
			accts = append(accts, fmt.Sprintf("%s=%s@%d", kv.Key, kv.Value, kv.ModRevision))
		}
		return total, fmt.Sprintf("total %d at revision %d, want %d: %v", total, resp.Header.Revision, bankAccounts*bankInitial, accts), nil
	}
	return total, "", nil
}

func TestBankTransfersAcrossRanges(t *testing.T) {
	c := startCluster(t, 3)
	for _, k := range []string{"acct/04", "acct/08", "acct/12"} {
		c.splitAt(0, k)
	}
	setup := newClient(t, strings.Split(c.endpoints(), ",")...)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	for i := range bankAccounts {
		_, err := setup.Put(ctx, bankKey(i), strconv.Itoa(bankInitial))
		require.NoError(t, err)
	}

	var transfers, conflicts, failures, audits atomic.Int64
	var mu sync.Mutex
	var violations []string
	violation := func(s string) {
		mu.Lock()
		violations = append(violations, s)
		mu.Unlock()
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for w := range 6 {
		cli := newClient(t, strings.Split(c.endpoints(w%3, (w+1)%3), ",")...)
		rng := rand.New(rand.NewPCG(uint64(w), uint64(time.Now().UnixNano())))
		wg.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				from, to := rng.IntN(bankAccounts), rng.IntN(bankAccounts-1)
				if to >= from {
					to++
				}
				rctx, rcancel := context.WithTimeout(ctx, 5*time.Second)
				a, errA := cli.Get(rctx, bankKey(from))
				b, errB := cli.Get(rctx, bankKey(to))
				if errA != nil || errB != nil || len(a.Kvs) != 1 || len(b.Kvs) != 1 {
					rcancel()
					failures.Add(1)
					continue
				}
				balA, _ := strconv.Atoi(string(a.Kvs[0].Value))
				balB, _ := strconv.Atoi(string(b.Kvs[0].Value))
				amount := rng.IntN(10) + 1
				if amount > balA {
					rcancel()
					continue
				}
				resp, err := cli.Txn(rctx).If(
					clientv3.Compare(clientv3.ModRevision(bankKey(from)), "=", a.Kvs[0].ModRevision),
					clientv3.Compare(clientv3.ModRevision(bankKey(to)), "=", b.Kvs[0].ModRevision),
				).Then(
					clientv3.OpPut(bankKey(from), strconv.Itoa(balA-amount)),
					clientv3.OpPut(bankKey(to), strconv.Itoa(balB+amount)),
				).Commit()
				rcancel()
				switch {
				case err != nil:
					failures.Add(1) // unknown outcome; the audits tell
				case resp.Succeeded:
					transfers.Add(1)
				default:
					conflicts.Add(1)
				}
			}
		})
	}
	for a := range 3 {
		cli := newClient(t, strings.Split(c.endpoints(a), ",")...)
		wg.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				var opts []clientv3.OpOption
				if a == 2 {
					opts = append(opts, clientv3.WithSerializable())
				}
				rctx, rcancel := context.WithTimeout(ctx, 5*time.Second)
				_, problem, err := bankAudit(rctx, cli, opts...)
				rcancel()
				if err != nil {
					time.Sleep(10 * time.Millisecond) // the node is down
					continue
				}
				audits.Add(1)
				if problem != "" {
					violation(fmt.Sprintf("audit through node %d: %s", a, problem))
				}
			}
		})
	}

	// Faults: each node SIGKILLed and restarted in turn, and a split of a
	// loaded range after each.
	splits := []string{"acct/02", "acct/06", "acct/10"}
	for i := range 3 {
		time.Sleep(time.Second)
		t.Logf("killing %s (transfers so far %d)", c.nodes[i].name, transfers.Load())
		c.kill(i)
		time.Sleep(time.Second)
		c.restart(i)
		res := c.rctlOn((i+1)%3, "range", "split", splits[i])
		t.Logf("split at %s: %s", splits[i], strings.TrimSpace(res.stdout+res.stderr))
	}
	time.Sleep(time.Second)
	close(stop)
	wg.Wait()

	t.Logf("transfers %d, compare failures %d, errors %d, audits %d", transfers.Load(), conflicts.Load(), failures.Load(), audits.Load())
	require.Empty(t, violations)
	require.Positive(t, transfers.Load())
	require.Positive(t, audits.Load())
	for i := range c.nodes {
		cli := newClient(t, c.nodes[i].endpoint())
		total, problem, err := bankAudit(ctx, cli)
		require.NoError(t, err)
		require.Empty(t, problem, "final audit through node %d", i)
		require.Equal(t, bankAccounts*bankInitial, total)
	}
}

// TestTxnCoordinatorKilled SIGKILLs a coordinator after its prepares and
// before it answered or recorded the commit: once the record expires,
// recovery finds every intent, so the transaction committed; its writes
// apply at one revision and the locked keys are writable again.
func TestTxnCoordinatorKilled(t *testing.T) {
	c := startCluster(t, 3)
	c.splitAt(0, "m")
	cli := newClient(t, c.nodes[1].endpoint())
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for _, k := range []string{"a", "z"} {
		_, err := cli.Put(ctx, k, "before")
		require.NoError(t, err)
	}
	c.nodes[0].enableFailpoint(t, "nodeTxnAfterPrepare", `sleep("1m")`)
	victim := newClient(t, c.nodes[0].endpoint())
	go func() {
		tctx, tcancel := context.WithTimeout(ctx, 30*time.Second)
		defer tcancel()
		_, _ = victim.Txn(tctx).Then(clientv3.OpPut("a", "txn"), clientv3.OpPut("z", "txn")).Commit()
	}()
	// The prepares are in when a plain write of a locked key blocks.
	waitFor(t, 10*time.Second, "the coordinator to lock a", func() (bool, string) {
		pctx, pcancel := context.WithTimeout(ctx, 200*time.Millisecond)
		defer pcancel()
		_, err := cli.Put(pctx, "a", "probe")
		return err != nil, fmt.Sprint(err)
	})
	killed := time.Now()
	c.kill(0)
	for _, k := range []string{"a", "z"} {
		// A put may time out while the dead node's ranges elect new
		// leaders; the keys must be writable well within this deadline.
		waitFor(t, 20*time.Second, "a put of "+k, func() (bool, string) {
			_, err := cli.Put(ctx, k, "after")
			return err == nil, fmt.Sprint(err)
		})
	}
	t.Logf("locked keys writable %v after the coordinator died", time.Since(killed).Round(time.Millisecond))
	resp, err := cli.Get(ctx, "", clientv3.WithFromKey())
	require.NoError(t, err)
	require.Len(t, resp.Kvs, 2)
	for _, kv := range resp.Kvs {
		require.Equal(t, "after", string(kv.Value), "%s", kv.Key)
	}
	// Every participant held its intent when the coordinator died, so
	// the transaction had committed (parallel commit): recovery applied
	// both puts, at one revision, before the plain writes.
	var txnRevs []int64
	for _, k := range []string{"a", "z"} {
		wctx, wcancel := context.WithCancel(ctx)
		var history []string
		rev := int64(0)
	read:
		for wr := range cli.Watch(wctx, k, clientv3.WithRev(1)) {
			require.NoError(t, wr.Err())
			for _, ev := range wr.Events {
				history = append(history, string(ev.Kv.Value))
				switch string(ev.Kv.Value) {
				case "txn":
					rev = ev.Kv.ModRevision
				case "after":
					break read
				}
			}
		}
		wcancel()
		require.NotZero(t, rev, "history of %s: %v", k, history)
		txnRevs = append(txnRevs, rev)
	}
	require.Equal(t, txnRevs[0], txnRevs[1])
}
