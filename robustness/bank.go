//go:build linux

package robustness

import (
	"context"
	"fmt"
	"math/rand/v2"
	"strconv"
	"strings"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// The bank runs beside the model's traffic: accounts in the first and the
// last of the four ranges (outside the keys the model's deletes cover),
// transfers between them as cross-range transactions that compare both
// accounts' mod_revisions, and audits that read every account in one
// snapshot. The total never changes.
var bankAccounts = []string{"0/acct0", "0/acct1", "0/acct2", "0/acct3", "y/acct4", "y/acct5", "y/acct6", "y/acct7"}

const bankInitial = 100

// Bank counts transfers and collects invariant violations.
type Bank struct {
	mu         sync.Mutex
	Problems   []string
	Transfers  int
	Audits     int
	Unanswered int
}

func (b *Bank) problem(format string, args ...any) {
	b.mu.Lock()
	b.Problems = append(b.Problems, fmt.Sprintf(format, args...))
	b.mu.Unlock()
}

// Open puts every account's initial balance.
func (b *Bank) Open(ctx context.Context, kv *clientv3.Client) error {
	for _, a := range bankAccounts {
		if _, err := kv.Put(ctx, a, strconv.Itoa(bankInitial)); err != nil {
			return err
		}
	}
	return nil
}

// read returns every account's balance and mod_revision at one snapshot.
func (b *Bank) read(ctx context.Context, kv *clientv3.Client, opts ...clientv3.OpOption) ([]int, []int64, int64, error) {
	ops := make([]clientv3.Op, 0, len(bankAccounts))
	for _, a := range bankAccounts {
		ops = append(ops, clientv3.OpGet(a, opts...))
	}
	resp, err := kv.Txn(ctx).Then(ops...).Commit()
	if err != nil {
		return nil, nil, 0, err
	}
	bal := make([]int, len(bankAccounts))
	revs := make([]int64, len(bankAccounts))
	for i, r := range resp.Responses {
		kvs := r.GetResponseRange().Kvs
		if len(kvs) != 1 {
			return nil, nil, 0, fmt.Errorf("account %s missing at revision %d", bankAccounts[i], resp.Header.Revision)
		}
		if bal[i], err = strconv.Atoi(string(kvs[0].Value)); err != nil {
			return nil, nil, 0, fmt.Errorf("account %s holds %q", bankAccounts[i], kvs[0].Value)
		}
		revs[i] = kvs[0].ModRevision
	}
	return bal, revs, resp.Header.Revision, nil
}

// Audit reads every account at one snapshot (serializable when asked)
// and records a violation if the total is off or an account is missing.
func (b *Bank) Audit(ctx context.Context, kv *clientv3.Client, serializable bool) {
	var opts []clientv3.OpOption
	if serializable {
		opts = append(opts, clientv3.WithSerializable())
	}
	bal, _, rev, err := b.read(ctx, kv, opts...)
	if err != nil {
		// A serializable read may be stale (etcd's semantics): from a
		// restarted node, older than the accounts themselves.
		stale := serializable && strings.Contains(err.Error(), "missing")
		if ctx.Err() == nil && !isUnavailable(err) && !stale {
			b.problem("audit: %v", err)
		}
		return
	}
	total := 0
	for _, v := range bal {
		total += v
	}
	b.mu.Lock()
	b.Audits++
	b.mu.Unlock()
	if total != bankInitial*len(bankAccounts) {
		kind := "linearizable"
		if serializable {
			kind = "serializable"
		}
		b.problem("%s audit through %v at revision %d: total %d, want %d (%v)", kind, kv.Endpoints(), rev, total,
			bankInitial*len(bankAccounts), bal)
	}
}

// Transfer moves a random amount between two accounts of different
// ranges if neither changed since it read them.
func (b *Bank) Transfer(ctx context.Context, kv *clientv3.Client, rng *rand.Rand) {
	ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	bal, revs, _, err := b.read(ctx, kv)
	if err != nil {
		return
	}
	from := rng.IntN(len(bankAccounts) / 2)
	to := len(bankAccounts)/2 + rng.IntN(len(bankAccounts)/2)
	if rng.IntN(2) == 0 {
		from, to = to, from
	}
	amount := 1 + rng.IntN(10)
	if bal[from] < amount {
		return
	}
	resp, err := kv.Txn(ctx).If(
		clientv3.Compare(clientv3.ModRevision(bankAccounts[from]), "=", revs[from]),
		clientv3.Compare(clientv3.ModRevision(bankAccounts[to]), "=", revs[to]),
	).Then(
		clientv3.OpPut(bankAccounts[from], strconv.Itoa(bal[from]-amount)),
		clientv3.OpPut(bankAccounts[to], strconv.Itoa(bal[to]+amount)),
	).Commit()
	b.mu.Lock()
	defer b.mu.Unlock()
	switch {
	case err != nil:
		b.Unanswered++
	case resp.Succeeded:
		b.Transfers++
	}
}

// isUnavailable reports an error a fault explains: the node or its ranges
// were briefly unreachable.
func isUnavailable(err error) bool {
	switch status.Code(err) {
	case codes.Unavailable, codes.DeadlineExceeded, codes.Canceled:
		return true
	}
	msg := err.Error()
	return strings.Contains(msg, "timed out") || strings.Contains(msg, "no leader") ||
		strings.Contains(msg, "deadline exceeded") || strings.Contains(msg, "context canceled")
}
