package kvstore

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"

	"go.etcd.io/etcd/api/v3/mvccpb"
)

// Version is one stored version of a key: the decoded value of the MVCC
// engine key (spanKey, ModRevision). Revisions are HLC revisions.
type Version struct {
	CreateRevision int64 // revision of the put that created this generation of the key
	ModRevision    int64 // revision of this version (from the engine key, not the value)
	Version        int64 // 1 for the creating put, +1 per later put; 0 for tombstones
	Lease          int64 // etcd lease ID attached to the key, 0 for none
	Sub            int64 // index of the change within its revision (etcd's sub-revision)
	Value          []byte
	Tombstone      bool // a delete marker; only Sub and ModRevision are meaningful
}

// Encoded version value layout (versionFormat1):
//
//	live:      0x01 flags=0x00 uvarint(create) uvarint(version) varint(lease) uvarint(sub) value...
//	tombstone: 0x01 flags=0x01 uvarint(sub)
//
// Varints must be minimally encoded, so decoding then encoding reproduces
// the input byte for byte.
const (
	versionFormat1 byte = 0x01
	flagTombstone  byte = 0x01
)

var errBadVersion = errors.New("kvstore: malformed MVCC version")

// EncodeVersion appends the value encoding of v to dst and returns it.
// ModRevision is not encoded (it is part of the engine key). For a
// tombstone only Sub is encoded.
func EncodeVersion(dst []byte, v *Version) []byte {
	if v.Tombstone {
		dst = append(dst, versionFormat1, flagTombstone)
		return binary.AppendUvarint(dst, uint64(v.Sub))
	}
	dst = append(dst, versionFormat1, 0)
	dst = binary.AppendUvarint(dst, uint64(v.CreateRevision))
	dst = binary.AppendUvarint(dst, uint64(v.Version))
	dst = binary.AppendVarint(dst, v.Lease)
	dst = binary.AppendUvarint(dst, uint64(v.Sub))
	return append(dst, v.Value...)
}

// DecodeVersion decodes the stored value raw of spanKey at revision rev.
// The returned Value is a copy (nil when empty). Malformed input (unknown
// format or flags, bad or non-minimal varints, trailing bytes after a
// tombstone, a live version with Version < 1 or CreateRevision outside
// [1, rev]) yields an error naming the key and revision; it never panics.
func DecodeVersion(spanKey []byte, rev int64, raw []byte) (*Version, error) {
	return decodeVersion(spanKey, rev, raw, true)
}

func decodeVersion(spanKey []byte, rev int64, raw []byte, withValue bool) (*Version, error) {
	bad := func(what string) error {
		return fmt.Errorf("%w: key %q rev %d: %s", errBadVersion, spanKey, rev, what)
	}
	if len(raw) < 2 {
		return nil, bad("too short")
	}
	if raw[0] != versionFormat1 {
		return nil, bad(fmt.Sprintf("unknown format %#x", raw[0]))
	}
	flags := raw[1]
	if flags&^flagTombstone != 0 {
		return nil, bad(fmt.Sprintf("unknown flags %#x", flags))
	}
	b := raw[2:]
	v := &Version{ModRevision: rev}
	if flags&flagTombstone != 0 {
		sub, n := readUvarint63(b)
		if n <= 0 {
			return nil, bad("bad sub-revision")
		}
		if n != len(b) {
			return nil, bad("trailing bytes after tombstone")
		}
		v.Tombstone, v.Sub = true, sub
		return v, nil
	}
	var n int
	if v.CreateRevision, n = readUvarint63(b); n <= 0 {
		return nil, bad("bad create revision")
	}
	b = b[n:]
	if v.Version, n = readUvarint63(b); n <= 0 {
		return nil, bad("bad version")
	}
	b = b[n:]
	lease, n := binary.Varint(b)
	if n <= 0 || n != varintLen(lease) {
		return nil, bad("bad lease")
	}
	v.Lease = lease
	b = b[n:]
	if v.Sub, n = readUvarint63(b); n <= 0 {
		return nil, bad("bad sub-revision")
	}
	b = b[n:]
	if v.Version < 1 {
		return nil, bad("live version with version 0")
	}
	if v.CreateRevision < 1 || v.CreateRevision > rev {
		return nil, bad(fmt.Sprintf("create revision %d outside [1, %d]", v.CreateRevision, rev))
	}
	if withValue && len(b) > 0 {
		v.Value = append([]byte(nil), b...)
	}
	return v, nil
}

// rawIsTombstone reports whether the encoded version raw is a tombstone,
// checking only its header.
func rawIsTombstone(raw []byte) (bool, error) {
	if len(raw) < 2 || raw[0] != versionFormat1 || raw[1]&^flagTombstone != 0 {
		return false, fmt.Errorf("%w: bad header", errBadVersion)
	}
	return raw[1]&flagTombstone != 0, nil
}

// readUvarint63 reads a minimally encoded uvarint that fits in an int64.
// n <= 0 reports an error.
func readUvarint63(b []byte) (int64, int) {
	x, n := binary.Uvarint(b)
	if n <= 0 || x > math.MaxInt64 || n != uvarintLen(x) {
		return 0, -1
	}
	return int64(x), n
}

func uvarintLen(x uint64) int {
	n := 1
	for x >= 0x80 {
		x >>= 7
		n++
	}
	return n
}

func varintLen(x int64) int {
	ux := uint64(x) << 1
	if x < 0 {
		ux = ^ux
	}
	return uvarintLen(ux)
}

// keyValue converts v to the etcd KeyValue of key (the key without its
// namespace byte). Tombstones give nil.
func (v *Version) keyValue(key []byte) *mvccpb.KeyValue {
	if v.Tombstone {
		return nil
	}
	return &mvccpb.KeyValue{
		Key:            key,
		CreateRevision: v.CreateRevision,
		ModRevision:    v.ModRevision,
		Version:        v.Version,
		Value:          v.Value,
		Lease:          v.Lease,
	}
}
