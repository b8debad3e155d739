package rangeraft

import (
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
)

type metrics struct {
	ranges           prometheus.Gauge
	splits           prometheus.Counter
	leaderChanges    prometheus.Counter
	proposalsApplied prometheus.Counter
	proposalsPending prometheus.Gauge
	proposalsFailed  prometheus.Counter
	// proposalsForwarded counts client writes this node handed to their
	// range's leader in the raft stream (Replica.ProposeRequest).
	proposalsForwarded prometheus.Counter
	walFsync           prometheus.Histogram
	readyLatency       prometheus.Histogram
	readyBatchSize     prometheus.Histogram
	droppedMessages    prometheus.Counter
	closedViolations   prometheus.Counter
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		ranges: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "rangekv_ranges", Help: "Number of range replicas on this node."}),
		splits: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "rangekv_range_splits_total", Help: "Number of range splits applied on this node."}),
		leaderChanges: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "etcd_server_leader_changes_seen_total", Help: "Number of range leader changes seen."}),
		proposalsApplied: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "etcd_server_proposals_applied_total", Help: "Number of raft entries applied."}),
		proposalsPending: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "etcd_server_proposals_pending", Help: "Number of pending proposals to commit."}),
		proposalsFailed: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "etcd_server_proposals_failed_total", Help: "Number of failed proposals."}),
		proposalsForwarded: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "rangekv_proposals_forwarded_total", Help: "Client writes handed to their range's leader in the raft stream."}),
		walFsync: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "etcd_disk_wal_fsync_duration_seconds", Help: "Latency of the batched raft WAL fsync.",
			Buckets: prometheus.ExponentialBuckets(0.001, 2, 14)}),
		readyLatency: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "rangekv_raft_ready_duration_seconds", Help: "Duration of one scheduler pass over ready replicas.",
			Buckets: prometheus.ExponentialBuckets(0.0001, 2, 16)}),
		readyBatchSize: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "rangekv_raft_ready_replicas", Help: "Replicas persisted together in one scheduler pass.",
			Buckets: prometheus.ExponentialBuckets(1, 2, 12)}),
		droppedMessages: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "rangekv_raft_messages_dropped_total", Help: "Raft messages dropped because a peer queue was full."}),
		closedViolations: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "rangekv_closed_timestamp_violations_total",
			Help: "Writes applied at or below their range's closed timestamp (always 0 unless clocks broke their bound)."}),
	}
	if reg != nil {
		reg.MustRegister(m.ranges, m.splits, m.leaderChanges, m.proposalsApplied, m.proposalsPending,
			m.proposalsFailed, m.proposalsForwarded, m.walFsync, m.readyLatency, m.readyBatchSize, m.droppedMessages, m.closedViolations)
	}
	return m
}

// raftLogger adapts zap to raft.Logger. raft's Info level is chatty per
// range; it goes to zap's Info as etcd does.
type raftLogger struct{ s *zap.SugaredLogger }

func newRaftLogger(l *zap.Logger) *raftLogger {
	return &raftLogger{s: l.WithOptions(zap.AddCallerSkip(1)).Sugar().Named("raft")}
}

func (l *raftLogger) Debug(v ...interface{})                   { l.s.Debug(v...) }
func (l *raftLogger) Debugf(format string, v ...interface{})   { l.s.Debugf(format, v...) }
func (l *raftLogger) Error(v ...interface{})                   { l.s.Error(v...) }
func (l *raftLogger) Errorf(format string, v ...interface{})   { l.s.Errorf(format, v...) }
func (l *raftLogger) Info(v ...interface{})                    { l.s.Info(v...) }
func (l *raftLogger) Infof(format string, v ...interface{})    { l.s.Infof(format, v...) }
func (l *raftLogger) Warning(v ...interface{})                 { l.s.Warn(v...) }
func (l *raftLogger) Warningf(format string, v ...interface{}) { l.s.Warnf(format, v...) }
func (l *raftLogger) Fatal(v ...interface{})                   { l.s.Fatal(v...) }
func (l *raftLogger) Fatalf(format string, v ...interface{})   { l.s.Fatalf(format, v...) }
func (l *raftLogger) Panic(v ...interface{})                   { l.s.Panic(v...) }
func (l *raftLogger) Panicf(format string, v ...interface{})   { l.s.Panicf(format, v...) }
