package kvstore

import (
	"bytes"
	"encoding/binary"
	"errors"
)

// Engine key layout. Every key in the node's single Pebble engine starts
// with one namespace byte:
//
//	0x00 local:    node identity and per-range raft state (never replicated
//	               by value; each replica writes its own copy)
//	0x01 meta:     MVCC data of the meta range (range descriptors)
//	0x02 user:     MVCC data of user keys (the etcd keyspace)
//	0x03           end of the replicated keyspace
//
// Range spans are expressed in this encoded keyspace ("span keys"): the user
// key k is the span key 0x02||k, so the range covering every user key is
// [0x02, 0x03). MVCC keys append an escaped form of the span key and an
// inverted revision so that versions of a key sort newest first.
const (
	nsLocal byte = 0x00
	nsMeta  byte = 0x01
	nsUser  byte = 0x02
	nsEnd   byte = 0x03
)

// Span keys bounding the replicated keyspaces: the meta range's
// [MetaSpanStart, MetaSpanEnd) and all user keys' [UserSpanStart,
// UserSpanEnd). Callers must not modify them.
var (
	MetaSpanStart = []byte{nsMeta}
	MetaSpanEnd   = []byte{nsUser}
	UserSpanStart = []byte{nsUser}
	UserSpanEnd   = []byte{nsEnd}
)

// UserSpanKey maps an etcd key to its span key (0x02||key).
func UserSpanKey(key []byte) []byte {
	out := make([]byte, 1+len(key))
	out[0] = nsUser
	copy(out[1:], key)
	return out
}

// UserSpanEndKey maps an etcd range_end to a span end key. An empty end (no
// upper bound, etcd's "\x00" from-key form after translation) maps to
// UserSpanEnd.
func UserSpanEndKey(end []byte) []byte {
	if len(end) == 0 {
		return UserSpanEnd
	}
	return UserSpanKey(end)
}

// MetaSpanKey maps a meta-range key to its span key (0x01||key).
func MetaSpanKey(key []byte) []byte {
	out := make([]byte, 1+len(key))
	out[0] = nsMeta
	copy(out[1:], key)
	return out
}

// UserKeyFromSpan strips the user namespace byte. ok is false when spanKey is
// not in the user keyspace.
func UserKeyFromSpan(spanKey []byte) (key []byte, ok bool) {
	if len(spanKey) == 0 || spanKey[0] != nsUser {
		return nil, false
	}
	return spanKey[1:], true
}

// MVCC key encoding: escape(spanKey) || 0x00 0x01 || bigEndian(^uint64(rev)).
//
// escape replaces 0x00 with 0x00 0xFF so that the terminator 0x00 0x01 sorts
// below any continuation of the key: for keys a < b (bytewise), every
// version of a sorts before every version of b, and versions of one key sort
// by descending revision.
const mvccRevLen = 8

// EncodeMVCCKey appends the engine key of spanKey at rev to dst.
func EncodeMVCCKey(dst, spanKey []byte, rev int64) []byte {
	dst = appendEscaped(dst, spanKey)
	dst = append(dst, 0x00, 0x01)
	return binary.BigEndian.AppendUint64(dst, ^uint64(rev))
}

// MVCCKeyPrefix returns the engine-key prefix shared by every version of
// spanKey (the escaped key and its terminator).
func MVCCKeyPrefix(spanKey []byte) []byte {
	return appendMVCCKeyPrefix(make([]byte, 0, len(spanKey)+2), spanKey)
}

// appendMVCCKeyPrefix appends MVCCKeyPrefix(spanKey) to dst.
func appendMVCCKeyPrefix(dst, spanKey []byte) []byte {
	return append(appendEscaped(dst, spanKey), 0x00, 0x01)
}

// mvccPrefixOf returns the part of an MVCC engine key shared by all
// versions of its span key (MVCCKeyPrefix), without copying. Errors:
// ErrBadMVCCKey.
func mvccPrefixOf(k []byte) ([]byte, error) {
	if len(k) < 2+mvccRevLen || k[len(k)-mvccRevLen-2] != 0x00 || k[len(k)-mvccRevLen-1] != 0x01 {
		return nil, ErrBadMVCCKey
	}
	return k[:len(k)-mvccRevLen], nil
}

// MVCCKeyAfterVersions returns the smallest engine key greater than every
// version of spanKey and smaller than every version of any larger key.
func MVCCKeyAfterVersions(spanKey []byte) []byte {
	dst := appendEscaped(make([]byte, 0, len(spanKey)+2), spanKey)
	return append(dst, 0x00, 0x02)
}

// MVCCSpanBound returns the engine key at which the versions of spanKey
// start; used as an iterator bound for a span [start, end).
func MVCCSpanBound(spanKey []byte) []byte {
	return appendEscaped(make([]byte, 0, len(spanKey)), spanKey)
}

// ErrBadMVCCKey is returned by DecodeMVCCKey for malformed engine keys.
var ErrBadMVCCKey = errors.New("kvstore: malformed MVCC key")

// DecodeMVCCKey splits an engine key into its span key and revision. The
// returned spanKey is a fresh slice.
func DecodeMVCCKey(k []byte) (spanKey []byte, rev int64, err error) {
	body, err := mvccPrefixOf(k)
	if err != nil {
		return nil, 0, err
	}
	body = body[:len(body)-2]
	spanKey = make([]byte, 0, len(body))
	for i := 0; i < len(body); i++ {
		c := body[i]
		if c == 0x00 {
			if i+1 >= len(body) || body[i+1] != 0xFF {
				return nil, 0, ErrBadMVCCKey
			}
			i++
		}
		spanKey = append(spanKey, c)
	}
	r := ^binary.BigEndian.Uint64(k[len(k)-mvccRevLen:])
	if int64(r) < 0 {
		return nil, 0, ErrBadMVCCKey
	}
	return spanKey, int64(r), nil
}

func appendEscaped(dst, key []byte) []byte {
	for {
		i := bytes.IndexByte(key, 0x00)
		if i < 0 {
			return append(dst, key...)
		}
		dst = append(dst, key[:i+1]...)
		dst = append(dst, 0xFF)
		key = key[i+1:]
	}
}

// Local keys. Layout: 0x00 'n' <suffix> for node identity;
// 0x00 'r' bigEndian(rangeID) <suffix> for per-range state.
var nodeIdentKey = []byte{nsLocal, 'n', 'i'}

// NodeIdentKey is the key of the node identity record (cluster, node IDs).
func NodeIdentKey() []byte { return nodeIdentKey }

// Per-range local key suffixes.
const (
	suffixHardState   = 'h'
	suffixTruncated   = 't'
	suffixApplied     = 'a'
	suffixLog         = 'l'
	suffixStats       = 's'
	rangeLocalKeyBase = 2 + 8
)

// RangeLocalPrefix returns 0x00 'r' rangeID: the prefix of all of a range's
// local keys on this node.
func RangeLocalPrefix(rangeID uint64) []byte {
	k := make([]byte, 0, rangeLocalKeyBase+9)
	k = append(k, nsLocal, 'r')
	return binary.BigEndian.AppendUint64(k, rangeID)
}

func rangeLocalKey(rangeID uint64, suffix byte) []byte {
	return append(RangeLocalPrefix(rangeID), suffix)
}

// RaftHardStateKey holds the range's raftpb.HardState.
func RaftHardStateKey(rangeID uint64) []byte { return rangeLocalKey(rangeID, suffixHardState) }

// RaftTruncatedStateKey holds the index and term of the last entry removed
// from the range's log (raft's "first index - 1").
func RaftTruncatedStateKey(rangeID uint64) []byte { return rangeLocalKey(rangeID, suffixTruncated) }

// RangeAppliedStateKey holds the range's applied index, term and revision.
func RangeAppliedStateKey(rangeID uint64) []byte { return rangeLocalKey(rangeID, suffixApplied) }

// Replica descriptors are indexed apart from the per-range keys so that a
// node lists its replicas without scanning raft logs: 0x00 'd' rangeID.
var replicaDescPrefix = []byte{nsLocal, 'd'}

// RangeDescriptorKey holds this node's copy of a range's descriptor; its
// presence means the node has a replica of the range.
func RangeDescriptorKey(rangeID uint64) []byte {
	return binary.BigEndian.AppendUint64(append([]byte(nil), replicaDescPrefix...), rangeID)
}

// RangeDescriptorKeySpan bounds every RangeDescriptorKey.
func RangeDescriptorKeySpan() (start, end []byte) {
	return replicaDescPrefix, []byte{nsLocal, 'd' + 1}
}

// RangeStatsKey holds the range's MVCC statistics.
func RangeStatsKey(rangeID uint64) []byte { return rangeLocalKey(rangeID, suffixStats) }

// RaftLogPrefix is the prefix of the range's raft log entries.
func RaftLogPrefix(rangeID uint64) []byte { return rangeLocalKey(rangeID, suffixLog) }

// RaftLogKey is the key of the log entry at index.
func RaftLogKey(rangeID, index uint64) []byte {
	return binary.BigEndian.AppendUint64(RaftLogPrefix(rangeID), index)
}
