package kvstore

import (
	"fmt"
	"hash/maphash"
	"sync"

	"github.com/cockroachdb/pebble/v2"
)

// KeyPresence is a node's in-memory set of the span keys that may have a
// stored version (tombstones included) in its engine, kept as 64-bit
// hashes: the apply path asks it before seeking the engine for the
// version a write replaces, and a key it has never seen is known absent
// without the seek (etcd answers the same question from its in-memory key
// index; this keeps 8 bytes and map overhead per key, no values).
//
// Invariant: every span key with a version in the engine, or in a batch
// that may still commit, is in the set. It holds because the set is loaded
// from the engine before anything writes (LoadKeyPresence), every MVCC
// write of the apply path goes through WriteBatch.writeVersion, which adds
// its key before staging it, and a snapshot's keys are added as they are
// staged (AddEngineKey). Keys are never removed: a key compacted away or a
// hash collision only costs the seek the set would have saved.
type KeyPresence struct {
	seed maphash.Seed
	mu   sync.Mutex
	set  map[uint64]struct{}
}

// LoadKeyPresence returns the set of every span key with a version in r's
// replicated keyspaces (meta and user). It reads every version, so its
// cost grows with the engine's MVCC data, like etcd's index rebuild at
// start. Errors: the engine's, or a malformed MVCC key.
func LoadKeyPresence(r pebble.Reader) (*KeyPresence, error) {
	p := &KeyPresence{seed: maphash.MakeSeed(), set: map[uint64]struct{}{}}
	it, err := r.NewIter(&pebble.IterOptions{LowerBound: MVCCSpanBound(MetaSpanStart), UpperBound: MVCCSpanBound(UserSpanEnd)})
	if err != nil {
		return nil, err
	}
	defer it.Close()
	var last []byte
	for valid := it.First(); valid; valid = it.Next() {
		prefix, err := mvccPrefixOf(it.Key())
		if err != nil {
			return nil, fmt.Errorf("kvstore: engine key %x: %w", it.Key(), err)
		}
		if string(prefix) == string(last) {
			continue // another version of the same key
		}
		last = append(last[:0], prefix...)
		p.insert(maphash.Bytes(p.seed, prefix))
	}
	return p, it.Error()
}

// hash returns spanKey's hash: that of its MVCC key prefix, so that
// LoadKeyPresence hashes engine keys without decoding them.
func (p *KeyPresence) hash(spanKey []byte) uint64 {
	var buf [128]byte
	return maphash.Bytes(p.seed, appendMVCCKeyPrefix(buf[:0], spanKey))
}

// insert adds a hash to the set.
func (p *KeyPresence) insert(h uint64) {
	p.mu.Lock()
	p.set[h] = struct{}{}
	p.mu.Unlock()
}

// Add records that spanKey may have a stored version.
func (p *KeyPresence) Add(spanKey []byte) { p.insert(p.hash(spanKey)) }

// AddEngineKey records the span key of an engine key about to be written
// raw (a snapshot's data); keys outside the MVCC keyspaces are ignored.
// Errors: ErrBadMVCCKey for a malformed key in them.
func (p *KeyPresence) AddEngineKey(k []byte) error {
	if len(k) == 0 || k[0] < nsMeta || k[0] >= nsEnd {
		return nil
	}
	prefix, err := mvccPrefixOf(k)
	if err != nil {
		return fmt.Errorf("kvstore: engine key %x: %w", k, err)
	}
	p.insert(maphash.Bytes(p.seed, prefix))
	return nil
}

// MayContain reports whether spanKey may have a stored version; false
// means it has none.
func (p *KeyPresence) MayContain(spanKey []byte) bool {
	h := p.hash(spanKey)
	p.mu.Lock()
	_, ok := p.set[h]
	p.mu.Unlock()
	return ok
}

// Len returns the number of keys in the set.
func (p *KeyPresence) Len() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.set)
}
