package kvstore

import (
	"bytes"
	"fmt"
	"sort"

	"github.com/cockroachdb/pebble/v2"
	"go.etcd.io/etcd/api/v3/mvccpb"
)

// MVCCHistory calls fn with every change in span whose revision is in
// [fromRev, toRev], ordered by (revision, sub-revision), until fn returns
// false. Events are shaped like etcd's watch events: PUT carries the full
// KeyValue, DELETE carries Kv{Key, ModRevision}; PrevKv is the key's
// previous version when that version exists and is live (absent once
// compacted away). Keys are without their namespace byte. It scans every
// version in span and holds the matching events in memory.
func MVCCHistory(r pebble.Reader, span Span, fromRev, toRev int64, fn func(ev *mvccpb.Event) bool) error {
	if fromRev > toRev {
		return nil
	}
	type item struct {
		rev, sub int64
		ev       *mvccpb.Event
	}
	var items []item
	it, err := r.NewIter(spanIterOptions(span.Start, span.End))
	if err != nil {
		return err
	}
	defer it.Close()
	valid := it.First()
	for valid {
		spanKey, rev, err := DecodeMVCCKey(it.Key())
		if err != nil {
			return fmt.Errorf("kvstore: engine key %x: %w", it.Key(), err)
		}
		if rev > toRev {
			valid = it.SeekGE(EncodeMVCCKey(nil, spanKey, toRev))
			continue
		}
		key := stripNS(spanKey)
		prefix := MVCCKeyPrefix(spanKey)
		var pending *mvccpb.Event // newer event waiting for its PrevKv
		for valid && bytes.HasPrefix(it.Key(), prefix) {
			_, rev, err := DecodeMVCCKey(it.Key())
			if err != nil {
				return fmt.Errorf("kvstore: engine key %x: %w", it.Key(), err)
			}
			raw, err := it.ValueAndErr()
			if err != nil {
				return err
			}
			v, err := DecodeVersion(spanKey, rev, raw)
			if err != nil {
				return err
			}
			if pending != nil {
				pending.PrevKv = v.keyValue(key)
				pending = nil
			}
			if rev < fromRev {
				break
			}
			ev := &mvccpb.Event{Type: mvccpb.Event_PUT, Kv: v.keyValue(key)}
			if v.Tombstone {
				ev.Type = mvccpb.Event_DELETE
				ev.Kv = &mvccpb.KeyValue{Key: key, ModRevision: rev}
			}
			items = append(items, item{rev, v.Sub, ev})
			pending = ev
			valid = it.Next()
		}
		if valid && bytes.HasPrefix(it.Key(), prefix) {
			valid = it.SeekGE(MVCCKeyAfterVersions(spanKey))
		}
	}
	if err := it.Error(); err != nil {
		return err
	}
	sort.SliceStable(items, func(i, j int) bool {
		if items[i].rev != items[j].rev {
			return items[i].rev < items[j].rev
		}
		return items[i].sub < items[j].sub
	})
	for _, x := range items {
		if !fn(x.ev) {
			return nil
		}
	}
	return nil
}
