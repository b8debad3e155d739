package kvstore

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/cockroachdb/pebble/v2"
)

const statsFormat1 byte = 0x01

var errBadStats = errors.New("kvstore: malformed stats")

// Add adds d to s field by field (applying a Delta or a compaction delta).
func (s *Stats) Add(d Stats) {
	s.LiveKeys += d.LiveKeys
	s.LiveBytes += d.LiveBytes
	s.TotalBytes += d.TotalBytes
	s.Versions += d.Versions
}

// Sub subtracts d from s field by field (the part of a range a split gave
// away).
func (s *Stats) Sub(d Stats) {
	s.LiveKeys -= d.LiveKeys
	s.LiveBytes -= d.LiveBytes
	s.TotalBytes -= d.TotalBytes
	s.Versions -= d.Versions
}

// EncodeStats appends the encoding of s to dst: a format byte (0x01) then
// LiveKeys, LiveBytes, TotalBytes, Versions as zig-zag varints.
func EncodeStats(dst []byte, s Stats) []byte {
	dst = append(dst, statsFormat1)
	dst = binary.AppendVarint(dst, s.LiveKeys)
	dst = binary.AppendVarint(dst, s.LiveBytes)
	dst = binary.AppendVarint(dst, s.TotalBytes)
	return binary.AppendVarint(dst, s.Versions)
}

// DecodeStats decodes EncodeStats output. An empty input is the zero Stats;
// anything else malformed (unknown format, bad varint, trailing bytes) is
// an error.
func DecodeStats(b []byte) (Stats, error) {
	var s Stats
	if len(b) == 0 {
		return s, nil
	}
	if b[0] != statsFormat1 {
		return Stats{}, fmt.Errorf("%w: unknown format %#x", errBadStats, b[0])
	}
	b = b[1:]
	for _, f := range []*int64{&s.LiveKeys, &s.LiveBytes, &s.TotalBytes, &s.Versions} {
		x, n := binary.Varint(b)
		if n <= 0 {
			return Stats{}, fmt.Errorf("%w: bad varint", errBadStats)
		}
		*f, b = x, b[n:]
	}
	if len(b) != 0 {
		return Stats{}, fmt.Errorf("%w: %d trailing bytes", errBadStats, len(b))
	}
	return s, nil
}

// ComputeStats recomputes from scratch the Stats of every MVCC version in
// span (engine key bytes plus value bytes; a key is live when its newest
// version is not a tombstone). It reads everything in span; use it for
// checks and repair, not on the hot path.
func ComputeStats(r pebble.Reader, span Span) (Stats, error) {
	var s Stats
	it, err := r.NewIter(spanIterOptions(span.Start, span.End))
	if err != nil {
		return s, err
	}
	defer it.Close()
	var prefix []byte // MVCCKeyPrefix of the key whose versions we are in
	for valid := it.First(); valid; valid = it.Next() {
		k := it.Key()
		raw, err := it.ValueAndErr()
		if err != nil {
			return Stats{}, err
		}
		size := int64(len(k) + len(raw))
		s.Versions++
		s.TotalBytes += size
		if prefix != nil && bytes.HasPrefix(k, prefix) {
			continue // an older version
		}
		spanKey, rev, err := DecodeMVCCKey(k)
		if err != nil {
			return Stats{}, fmt.Errorf("kvstore: engine key %x: %w", k, err)
		}
		prefix = MVCCKeyPrefix(spanKey)
		tomb, err := rawIsTombstone(raw)
		if err != nil {
			return Stats{}, fmt.Errorf("kvstore: key %q rev %d: %w", spanKey, rev, err)
		}
		if !tomb {
			s.LiveKeys++
			s.LiveBytes += size
		}
	}
	return s, it.Error()
}

// spanIterOptions returns iterator bounds covering every version of every
// span key in [start, end); an empty end means no upper bound.
func spanIterOptions(start, end []byte) *pebble.IterOptions {
	o := &pebble.IterOptions{LowerBound: MVCCSpanBound(start)}
	if len(end) > 0 {
		o.UpperBound = MVCCSpanBound(end)
	}
	return o
}
