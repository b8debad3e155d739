package rangeraft

import (
	"strconv"
	"strings"

	gofail "go.etcd.io/gofail/runtime"
)

// Failpoints (go.etcd.io/gofail), enabled in a running binary through the
// environment, e.g.
//
//	GOFAIL_FAILPOINTS='rangeraftBeforeSplitCommit=sleep("1m")'
//
// or at run time through GOFAIL_HTTP. Disabled, each costs a read lock.
// Tests use them to stop a node at an exact point and SIGKILL it there.
var (
	// rangeraftBeforeSplitCommit: a replica staged a split (and the rest
	// of its apply pass) but has not committed the batch; it logged
	// "applying split".
	fpBeforeSplitCommit = gofail.NewFailpoint("rangeraftBeforeSplitCommit")
	// rangeraftAfterSplitCommit: the split's batch is durable in the
	// engine but the right-hand replica is not installed and the left
	// still has its old span in memory; it logged "split committed".
	fpAfterSplitCommit = gofail.NewFailpoint("rangeraftAfterSplitCommit")
	// rangeraftAfterRaftSave: a scheduler pass has made its raft entries
	// and hard states durable but has sent no message and applied nothing.
	fpAfterRaftSave = gofail.NewFailpoint("rangeraftAfterRaftSave")
	// rangeraftBeforeApplyCommit: a pass has staged the apply of its
	// committed entries but not committed the batch.
	fpBeforeApplyCommit = gofail.NewFailpoint("rangeraftBeforeApplyCommit")
	// rangeraftBeforeSnapshotCommit: a pass has staged a received
	// snapshot (the range's data, log and descriptor replaced) but has not
	// committed the batch.
	fpBeforeSnapshotCommit = gofail.NewFailpoint("rangeraftBeforeSnapshotCommit")
	// rangeraftAfterSnapshotCommit: a received snapshot is durable in the
	// engine but not yet installed in memory (the replica still has its old
	// log bounds and descriptor).
	fpAfterSnapshotCommit = gofail.NewFailpoint("rangeraftAfterSnapshotCommit")
	// rangeraftDropFrom, set to return("<hex node ID>,..."), discards
	// every raft batch, refuses every snapshot and blackholes every other
	// peer RPC (forwarded requests, transaction messages) from those
	// nodes: set on both sides, a two-way partition of peer traffic.
	fpDropFrom = gofail.NewFailpoint("rangeraftDropFrom")
)

func failpointBeforeSplitCommit() { _, _ = fpBeforeSplitCommit.Acquire() }
func failpointAfterSplitCommit()  { _, _ = fpAfterSplitCommit.Acquire() }
func failpointAfterRaftSave()     { _, _ = fpAfterRaftSave.Acquire() }
func failpointBeforeApplyCommit() { _, _ = fpBeforeApplyCommit.Acquire() }

func failpointBeforeSnapshotCommit() { _, _ = fpBeforeSnapshotCommit.Acquire() }
func failpointAfterSnapshotCommit()  { _, _ = fpAfterSnapshotCommit.Acquire() }

// dropList returns the node list rangeraftDropFrom is set to, "" when it
// is off (one read lock).
func dropList() string {
	v, err := fpDropFrom.Acquire()
	if err != nil {
		return ""
	}
	list, _ := v.(string)
	return list
}

// droppedFrom reports whether rangeraftDropFrom names node.
func droppedFrom(node uint64) bool {
	for _, f := range strings.Split(dropList(), ",") {
		if id, err := strconv.ParseUint(strings.TrimSpace(f), 16, 64); err == nil && id == node {
			return true
		}
	}
	return false
}
