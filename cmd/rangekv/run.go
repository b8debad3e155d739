package main

import (
	"errors"
	"fmt"
	"os"
	"os/signal"
	"runtime"
	"syscall"

	"github.com/spf13/cobra"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/rangekv/rangekv/node"
)

// runNode starts a node with s and runs it until SIGINT or SIGTERM (then it
// stops the node and returns nil) or until the node fails.
func runNode(_ *cobra.Command, s settings) error {
	lg, err := newLogger(s.logLevel, s.logOutputs)
	if err != nil {
		return usageError{err}
	}
	defer func() { _ = lg.Sync() }()
	for _, w := range s.warnings {
		lg.Warn(w)
	}

	// Listen for signals before starting, so that one arriving during
	// start-up still stops the node cleanly.
	sigc := make(chan os.Signal, 1)
	signal.Notify(sigc, syscall.SIGINT, syscall.SIGTERM)
	defer signal.Stop(sigc)

	lg.Info("starting rangekv", append(versionFields(), configFields(s)...)...)
	n, err := node.Start(s.cfg, lg)
	if err != nil {
		lg.Error("failed to start node", zap.Error(err))
		return fmt.Errorf("failed to start node: %w", err)
	}

	select {
	case sig := <-sigc:
		// A second signal while stopping kills the process the default way.
		signal.Stop(sigc)
		lg.Info("received signal; stopping node (send it again to kill)", zap.String("signal", sig.String()))
		n.Stop()
		lg.Info("node stopped")
		return nil
	case <-n.Done():
		err := n.Err()
		if err == nil {
			err = errors.New("node stopped unexpectedly")
		}
		lg.Error("node failed", zap.Error(err))
		return fmt.Errorf("node failed: %w", err)
	}
}

// newLogger builds zap's production JSON logger with ISO8601 times and
// durations written as strings ("100ms"), as etcd logs them.
func newLogger(level zapcore.Level, outputs []string) (*zap.Logger, error) {
	zc := zap.NewProductionConfig()
	zc.Level = zap.NewAtomicLevelAt(level)
	zc.EncoderConfig.EncodeTime = zapcore.ISO8601TimeEncoder
	zc.EncoderConfig.EncodeDuration = zapcore.StringDurationEncoder
	zc.OutputPaths = outputs
	zc.ErrorOutputPaths = []string{"stderr"}
	// Stack traces only for panics: an error log is not a programming error.
	lg, err := zc.Build(zap.AddStacktrace(zapcore.DPanicLevel))
	if err != nil {
		return nil, fmt.Errorf("cannot set up logging to --log-outputs=%v: %w", outputs, err)
	}
	return lg, nil
}

func versionFields() []zap.Field {
	return []zap.Field{
		zap.String("rangekv-version", Version),
		zap.String("etcd-api-version", etcdAPIVersion),
		zap.String("go-version", runtime.Version()),
		zap.String("go-os", runtime.GOOS),
		zap.String("go-arch", runtime.GOARCH),
		zap.Int("max-cpu-available", runtime.GOMAXPROCS(0)),
	}
}

// configFields renders the effective configuration for the start-up log,
// with flag names as keys.
func configFields(s settings) []zap.Field {
	c := s.cfg
	return []zap.Field{
		zap.String(flagName, c.Name),
		zap.String(flagDataDir, c.DataDir),
		zap.Stringer(flagListenClientURLs, &urlsValue{urls: c.ListenClientURLs}),
		zap.Stringer(flagAdvertiseClientURLs, &urlsValue{urls: c.AdvertiseClientURLs}),
		zap.Stringer(flagListenPeerURLs, &urlsValue{urls: c.ListenPeerURLs}),
		zap.Stringer(flagInitialAdvertisePeerURLs, &urlsValue{urls: c.InitialAdvertisePeerURLs}),
		zap.String(flagInitialCluster, node.FormatInitialCluster(c.InitialCluster)),
		zap.String(flagInitialClusterState, c.InitialClusterState),
		zap.String(flagInitialClusterToken, c.InitialClusterToken),
		zap.Duration(flagHeartbeatInterval, c.HeartbeatInterval),
		zap.Duration(flagElectionTimeout, c.ElectionTimeout),
		zap.Int(flagMaxRequestBytes, c.MaxRequestBytes),
		zap.Int(flagMaxTxnOps, c.MaxTxnOps),
		zap.Uint64(flagSnapshotCount, c.SnapshotCount),
		zap.Int64(flagRangeMaxBytes, c.RangeMaxBytes),
		zap.Float64(flagRangeSplitQPS, c.RangeSplitQPS),
		zap.Duration(flagMaxClockOffset, c.MaxClockOffset),
		zap.Duration(flagClosedTimestampInterval, c.ClosedTimestampInterval),
		zap.Duration(flagWatchProgressNotifyInterval, c.WatchProgressNotifyInterval),
		zap.String(flagLogLevel, s.logLevel.String()),
		zap.Strings(flagLogOutputs, s.logOutputs),
	}
}
