// Package kvstore owns the node's single Pebble engine: the engine key
// layout (keys.go), MVCC versions of user and meta keys keyed by HLC
// revision, the execution of etcd requests against a revision, compaction
// and range statistics. It knows nothing of raft: rangeraft decides which
// revision a command applies at and which batch it goes into.
package kvstore

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/cockroachdb/pebble/v2"
	"go.uber.org/zap"
)

// Engine is one node's Pebble database. All ranges of the node share it:
// raft logs, hard states, applied states and MVCC data.
type Engine struct {
	// DB is the underlying Pebble database. Writers must use batches; the
	// raft scheduler is the only writer of raft state.
	DB  *pebble.DB
	dir string
}

// ErrCorruptDataDir is wrapped by Open when the directory exists but is not
// a usable engine.
var ErrCorruptDataDir = errors.New("data directory is corrupt or not a rangekv engine")

// Open opens (creating if absent) the engine in dir. An existing dir that
// Pebble cannot open yields an error wrapping ErrCorruptDataDir.
func Open(dir string, logger *zap.Logger) (*Engine, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("create data dir %q: %w", dir, err)
	}
	opts := &pebble.Options{
		Logger:       pebbleLogger{logger.Sugar().Named("pebble")},
		MemTableSize: 64 << 20,
	}
	opts.EnsureDefaults()
	db, err := pebble.Open(filepath.Clean(dir), opts)
	if err != nil {
		return nil, fmt.Errorf("%w: open %q: %v", ErrCorruptDataDir, dir, err)
	}
	return &Engine{DB: db, dir: dir}, nil
}

// Close flushes nothing extra (all writes are already in the WAL) and
// closes the database.
func (e *Engine) Close() error { return e.DB.Close() }

// Dir returns the engine's directory.
func (e *Engine) Dir() string { return e.dir }

// DiskUsage returns the engine's on-disk size in bytes: sstables, WAL and
// metadata, live and obsolete (etcd's db size).
func (e *Engine) DiskUsage() int64 {
	m := e.DB.Metrics()
	// Pebble's WAL physical size lags the live WAL data until rotation;
	// count whichever is larger.
	return int64(m.DiskSpaceUsage() - m.WAL.PhysicalSize + max(m.WAL.PhysicalSize, m.WAL.Size))
}

// LiveUsage returns the bytes of live sstables and live WAL data (etcd's
// "db size in use").
func (e *Engine) LiveUsage() int64 {
	m := e.DB.Metrics()
	return int64(m.Table.Local.LiveSize + m.WAL.Size)
}

type pebbleLogger struct{ s *zap.SugaredLogger }

func (l pebbleLogger) Infof(format string, args ...interface{})  { l.s.Debugf(format, args...) }
func (l pebbleLogger) Errorf(format string, args ...interface{}) { l.s.Errorf(format, args...) }
func (l pebbleLogger) Fatalf(format string, args ...interface{}) { l.s.Fatalf(format, args...) }
