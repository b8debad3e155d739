//go:build linux

package robustness

import (
	"context"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/rangekv/rangekv/txnproto"
)

// Fault is one kind of failure the suite injects. Inject returns once
// the cluster is back to full strength (every node running and ready),
// or with an error if it could not be brought back.
type Fault struct {
	Name   string
	Inject func(ctx context.Context, c *Cluster, rng *rand.Rand) (string, error)
}

// Faults are the kinds a run cycles through, picked at random.
var Faults = []Fault{
	{"kill", killRestart},
	{"pause", pauseResume},
	{"split", splitRange},
	{"move-leader", moveLeader},
	{"drop-inbound", dropInbound},
	{"delay", delayInbound},
	{"crash-at-failpoint", crashAtFailpoint},
	{"clock-skew", clockSkew},
	{"partition", partition},
	{"crash-in-split", crashInSplit},
	{"crash-in-snapshot", crashInSnapshot},
}

// crashInSnapshot SIGKILLs a node, writes enough behind its back that the
// logs of the first and last ranges are truncated past it, and restarts it
// to panic at rangeraftBeforeSnapshotCommit or rangeraftAfterSnapshotCommit
// while it applies the snapshot that catches it up; then restarts it
// clean. The writes go to keys outside the traffic's resource and the
// bank's accounts.
func crashInSnapshot(ctx context.Context, c *Cluster, rng *rand.Rand) (string, error) {
	n := c.Nodes[rng.IntN(len(c.Nodes))]
	fp := []string{"rangeraftBeforeSnapshotCommit", "rangeraftAfterSnapshotCommit"}[rng.IntN(2)]
	what := fmt.Sprintf("crash %s at %s while it catches up by snapshot", n.Name, fp)
	n.Kill()
	var eps []string
	for _, o := range c.Nodes {
		if o != n {
			eps = append(eps, o.Endpoint())
		}
	}
	kv, err := dial(eps)
	if err != nil {
		return what, err
	}
	defer kv.Close()
	// Truncation keeps SnapshotCount/2 entries and runs every
	// 3*SnapshotCount/2: 2*SnapshotCount writes to a range truncate its
	// log past any entry the node had.
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for w := range 8 {
		wg.Go(func() {
			for i := w; i < 2*SnapshotCount; i += 8 {
				for _, k := range []string{"0/filler", "y/filler"} {
					// Retried: the kill may have taken leaders with it.
					for {
						_, err := kv.Put(ctx, fmt.Sprintf("%s%d", k, i%16), "x")
						if err == nil {
							break
						}
						if ctx.Err() != nil {
							errs <- err
							return
						}
						time.Sleep(50 * time.Millisecond)
					}
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	if err := <-errs; err != nil {
		what += fmt.Sprintf(" (filling: %v)", err)
	}
	if err := n.StartWithFailpoints(fp + `=1*panic("robustness")`); err != nil {
		return what, err
	}
	return restartCrashed(ctx, n, 10*time.Second, what)
}

// restartCrashed waits up to wait for n to crash at the failpoint a fault
// armed (SIGKILLing it if it did not get there, noted in what), restarts
// it without the failpoint, and waits until it is ready.
func restartCrashed(ctx context.Context, n *Node, wait time.Duration, what string) (string, error) {
	if !n.WaitExit(wait) {
		what += " (not reached: SIGKILL)"
	}
	n.Kill()
	if err := n.Start(); err != nil {
		return what, err
	}
	return what, n.WaitReady(ctx)
}

// crashInSplit makes a node panic while it applies a split, before or
// after the split's batch commits (rangeraftBeforeSplitCommit,
// rangeraftAfterSplitCommit), splits a range under the traffic, and
// restarts the node.
func crashInSplit(ctx context.Context, c *Cluster, rng *rand.Rand) (string, error) {
	n := c.Nodes[rng.IntN(len(c.Nodes))]
	fp := []string{"rangeraftBeforeSplitCommit", "rangeraftAfterSplitCommit"}[rng.IntN(2)]
	if err := n.EnableFailpoint(fp, `1*panic("robustness")`); err != nil {
		return "", err
	}
	split, err := splitRange(ctx, c, rng)
	what := fmt.Sprintf("crash %s at %s during a %s", n.Name, fp, split)
	if err != nil {
		// Usually the node crashed while serving the split request.
		what += fmt.Sprintf(" (split request: %v)", err)
	}
	return restartCrashed(ctx, n, 5*time.Second, what)
}

// partition cuts the raft traffic between a node and every other node,
// both ways, for 1.5–3 s (the rangeraftDropFrom failpoint on every node).
func partition(ctx context.Context, c *Cluster, rng *rand.Rand) (string, error) {
	ids := map[string]uint64{}
	if err := withRanges(ctx, c, rng, func(rc txnproto.RangesClient) error {
		nodes, err := rc.ListNodes(ctx, &txnproto.ListNodesRequest{})
		if err != nil {
			return err
		}
		for _, n := range nodes.Nodes {
			ids[n.Member.GetName()] = n.Member.GetId()
		}
		return nil
	}); err != nil {
		return "", err
	}
	victim := c.Nodes[rng.IntN(len(c.Nodes))]
	var others []string
	for _, n := range c.Nodes {
		if n != victim {
			others = append(others, fmt.Sprintf("%x", ids[n.Name]))
		}
	}
	const fp = "rangeraftDropFrom"
	what := "partition " + victim.Name + " from the others"
	for _, n := range c.Nodes {
		list := fmt.Sprintf("%x", ids[victim.Name])
		if n == victim {
			list = strings.Join(others, ",")
		}
		if err := n.EnableFailpoint(fp, fmt.Sprintf("return(%q)", list)); err != nil {
			return what, err
		}
	}
	time.Sleep(time.Duration(1500+rng.IntN(1500)) * time.Millisecond)
	for _, n := range c.Nodes {
		if err := n.DisableFailpoint(fp); err != nil {
			return what, err
		}
	}
	for _, n := range c.Nodes {
		if err := n.WaitReady(ctx); err != nil {
			return what, err
		}
	}
	return what, nil
}

// clockSkew restarts a node with its wall clock shifted by ±25–200 ms;
// the skew stays for the node's later restarts until another replaces
// it. Two nodes skewed opposite ways are then at most 400 ms apart,
// within the default --max-clock-offset of 500 ms (beyond it a node
// fences itself, as it must: the first long run found that).
func clockSkew(ctx context.Context, c *Cluster, rng *rand.Rand) (string, error) {
	n := c.Nodes[rng.IntN(len(c.Nodes))]
	d := time.Duration(25+rng.IntN(175)) * time.Millisecond
	if rng.IntN(2) == 0 {
		d = -d
	}
	n.Kill()
	n.SetClockSkew(d)
	if err := n.Start(); err != nil {
		return "", err
	}
	return fmt.Sprintf("restart %s with its clock %v off", n.Name, d), n.WaitReady(ctx)
}

// crashFailpoints are the gofail failpoints a node is crashed at: right
// after a scheduler pass made its raft state durable, before a pass
// commits its applies, and in a cross-range coordinator between its
// prepares and its answer.
var crashFailpoints = []string{"rangeraftAfterRaftSave", "rangeraftBeforeApplyCommit", "nodeTxnAfterPrepare"}

// crashAtFailpoint makes a node panic the first time it passes a
// failpoint (a crash at an exact point, as SIGKILL there), waits for it to
// die, and restarts it. If no request reaches the point within 5 s, the
// node is SIGKILLed instead.
func crashAtFailpoint(ctx context.Context, c *Cluster, rng *rand.Rand) (string, error) {
	n := c.Nodes[rng.IntN(len(c.Nodes))]
	fp := crashFailpoints[rng.IntN(len(crashFailpoints))]
	if err := n.EnableFailpoint(fp, `1*panic("robustness")`); err != nil {
		return "", err
	}
	what := fmt.Sprintf("crash %s at %s", n.Name, fp)
	return restartCrashed(ctx, n, 5*time.Second, what)
}

// dropInbound cuts every connection into a node's peer port and refuses
// new ones for 1.5–3 s: the node still sends (votes, heartbeats as a
// leader) but hears nothing, a one-way partition.
func dropInbound(ctx context.Context, c *Cluster, rng *rand.Rand) (string, error) {
	n := c.Nodes[rng.IntN(len(c.Nodes))]
	n.Proxy.Drop(true)
	time.Sleep(time.Duration(1500+rng.IntN(1500)) * time.Millisecond)
	n.Proxy.Drop(false)
	return "drop all traffic into " + n.Name, n.WaitReady(ctx)
}

// delayInbound delays every chunk into a node's peer port by 20–120 ms
// for 2 s.
func delayInbound(ctx context.Context, c *Cluster, rng *rand.Rand) (string, error) {
	n := c.Nodes[rng.IntN(len(c.Nodes))]
	d := time.Duration(20+rng.IntN(100)) * time.Millisecond
	n.Proxy.Delay(d)
	time.Sleep(2 * time.Second)
	n.Proxy.Delay(0)
	return fmt.Sprintf("delay traffic into %s by %v", n.Name, d), n.WaitReady(ctx)
}

// killRestart SIGKILLs a node, lets the others run without it, and
// restarts it.
func killRestart(ctx context.Context, c *Cluster, rng *rand.Rand) (string, error) {
	n := c.Nodes[rng.IntN(len(c.Nodes))]
	n.Kill()
	time.Sleep(time.Duration(500+rng.IntN(1500)) * time.Millisecond)
	if err := n.Start(); err != nil {
		return "", err
	}
	return "SIGKILL " + n.Name + " and restart", n.WaitReady(ctx)
}

// pauseResume stops a node with SIGSTOP for longer than the election
// timeout (1 s), then continues it.
func pauseResume(ctx context.Context, c *Cluster, rng *rand.Rand) (string, error) {
	n := c.Nodes[rng.IntN(len(c.Nodes))]
	if err := n.Pause(); err != nil {
		return "", err
	}
	time.Sleep(time.Duration(1500+rng.IntN(1500)) * time.Millisecond)
	if err := n.Resume(); err != nil {
		return "", err
	}
	return "SIGSTOP " + n.Name + " and SIGCONT", n.WaitReady(ctx)
}

// splitRange splits the range holding a random key at that key (if it
// does not start a range already), while the traffic runs.
func splitRange(ctx context.Context, c *Cluster, rng *rand.Rand) (string, error) {
	key := fmt.Sprintf("%c/%d", "ahpw"[rng.IntN(4)], rng.IntN(2)) // one of Keys
	err := withRanges(ctx, c, rng, func(rc txnproto.RangesClient) error {
		_, err := rc.SplitRange(ctx, &txnproto.SplitRangeRequest{Key: []byte(key)})
		return err
	})
	return "split at " + key, ignoreFailedPrecondition(err)
}

// moveLeader moves the leadership of a random key's range to a random
// node.
func moveLeader(ctx context.Context, c *Cluster, rng *rand.Rand) (string, error) {
	key := Keys[rng.IntN(NumKeys)]
	var target uint64
	err := withRanges(ctx, c, rng, func(rc txnproto.RangesClient) error {
		nodes, err := rc.ListNodes(ctx, &txnproto.ListNodesRequest{})
		if err != nil {
			return err
		}
		target = nodes.Nodes[rng.IntN(len(nodes.Nodes))].Member.GetId()
		_, err = rc.MoveLeader(ctx, &txnproto.MoveLeaderRequest{Key: []byte(key), TargetNode: target})
		return err
	})
	return fmt.Sprintf("move the leadership of %s's range to %x", key, target), ignoreFailedPrecondition(err)
}

// withRanges calls fn with the Ranges service of a random node.
func withRanges(ctx context.Context, c *Cluster, rng *rand.Rand, fn func(txnproto.RangesClient) error) error {
	n := c.Nodes[rng.IntN(len(c.Nodes))]
	conn, err := grpc.NewClient(n.Endpoint(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return err
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	return fn(txnproto.NewRangesClient(conn))
}

// ignoreFailedPrecondition treats a refusal that changes nothing (the
// key already starts a range, the target already leads) as done.
func ignoreFailedPrecondition(err error) error {
	if status.Code(err) == codes.FailedPrecondition {
		return nil
	}
	return err
}
