package kvstore

import (
	"bytes"
	"fmt"

	"github.com/cockroachdb/pebble/v2"
)

// compactChunk is the number of deletions per compaction batch.
const compactChunk = 1000

// Compact physically removes the versions that etcd's compaction at rev
// drops, for every key in span: let v be the key's newest version at or
// below rev; every version older than v is removed, and v itself too when
// it is a tombstone below rev (as in etcd, a tombstone exactly at rev is
// kept, so a watch from rev still sees the delete). Versions above rev are
// untouched, so reads at or above rev are unchanged. Writers may run
// concurrently (they only add versions above rev). Deletions are committed
// in batches of about 1000 with pebble.NoSync (the caller persists the
// compacted revision itself), each followed by stats(delta) with the
// (negative) change in Versions and TotalBytes; live keys and bytes never
// change. stats may be nil.
func Compact(db *pebble.DB, span Span, rev int64, stats func(delta Stats)) error {
	opts := spanIterOptions(span.Start, span.End)
	resume := opts.LowerBound
	for {
		b := db.NewBatch()
		var delta Stats
		next, err := compactChunkFrom(db, b, opts, resume, rev, &delta)
		if err == nil && !b.Empty() {
			err = b.Commit(pebble.NoSync)
		}
		b.Close()
		if err != nil {
			return err
		}
		if stats != nil && delta != (Stats{}) {
			stats(delta)
		}
		if next == nil {
			return nil
		}
		resume = next
	}
}

// compactChunkFrom adds to b the deletions for keys starting at engine key
// from until about compactChunk deletions are queued, and returns the engine
// key to resume from (nil when the span is done). A fresh iterator per chunk
// keeps each read view short-lived; a key is never split across chunks'
// views.
func compactChunkFrom(db *pebble.DB, b *pebble.Batch, opts *pebble.IterOptions, from []byte, rev int64, delta *Stats) ([]byte, error) {
	o := *opts
	o.LowerBound = from
	it, err := db.NewIter(&o)
	if err != nil {
		return nil, err
	}
	defer it.Close()
	valid := it.First()
	for valid {
		spanKey, krev, err := DecodeMVCCKey(it.Key())
		if err != nil {
			return nil, fmt.Errorf("kvstore: engine key %x: %w", it.Key(), err)
		}
		if krev > rev {
			valid = it.SeekGE(EncodeMVCCKey(nil, spanKey, rev))
			continue
		}
		// it is at the newest version <= rev of spanKey.
		raw, err := it.ValueAndErr()
		if err != nil {
			return nil, err
		}
		tomb, err := rawIsTombstone(raw)
		if err != nil {
			return nil, fmt.Errorf("kvstore: key %q rev %d: %w", spanKey, krev, err)
		}
		if !tomb || krev == rev {
			valid = it.Next() // keep it
		}
		prefix := MVCCKeyPrefix(spanKey)
		for valid && bytes.HasPrefix(it.Key(), prefix) {
			raw, err := it.ValueAndErr()
			if err != nil {
				return nil, err
			}
			if err := b.Delete(it.Key(), nil); err != nil {
				return nil, err
			}
			delta.Versions--
			delta.TotalBytes -= int64(len(it.Key()) + len(raw))
			valid = it.Next()
		}
		if int(b.Count()) >= compactChunk {
			if !valid {
				break
			}
			return MVCCKeyAfterVersions(spanKey), nil
		}
	}
	return nil, it.Error()
}
