package rangeraft

import gofail "go.etcd.io/gofail/runtime"

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
)

func failpointBeforeSplitCommit() { _, _ = fpBeforeSplitCommit.Acquire() }
func failpointAfterSplitCommit()  { _, _ = fpAfterSplitCommit.Acquire() }
func failpointAfterRaftSave()     { _, _ = fpAfterRaftSave.Acquire() }
func failpointBeforeApplyCommit() { _, _ = fpBeforeApplyCommit.Acquire() }
