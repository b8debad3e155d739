package kvstore

import (
	"bytes"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"math"
	"reflect"
	"testing"
)

func TestVersionRoundTrip(t *testing.T) {
	big := int64(1_700_000_000_000) << 20
	for _, v := range []*Version{
		{CreateRevision: 100, ModRevision: 200, Version: 2, Lease: 7, Sub: 3, Value: []byte("hello")},
		{CreateRevision: 1, ModRevision: 1, Version: 1},
		{CreateRevision: big, ModRevision: big + 5, Version: 1 << 40, Lease: -1, Sub: 1 << 20, Value: bytes.Repeat([]byte{0, 0xff}, 100)},
		{CreateRevision: math.MaxInt64, ModRevision: math.MaxInt64, Version: math.MaxInt64, Lease: math.MinInt64, Sub: math.MaxInt64},
		{ModRevision: 300, Sub: 4, Tombstone: true},
		{ModRevision: 300, Tombstone: true},
	} {
		raw := EncodeVersion([]byte("prefix"), v)
		require.Equal(t, []byte("prefix"), raw[:6])
		got, err := DecodeVersion([]byte("\x02k"), v.ModRevision, raw[6:])
		require.NoError(t, err)
		require.True(t, reflect.DeepEqual(v, got), "want %+v got %+v", v, got)
	}
	// A tombstone encodes only its sub-revision.
	assert.Equal(t, []byte{1, 1, 4}, EncodeVersion(nil, &Version{Tombstone: true, Sub: 4, Value: []byte("x"), Version: 3}))
}

func TestDecodeVersionErrors(t *testing.T) {
	good := EncodeVersion(nil, &Version{CreateRevision: 100, Version: 1, Value: []byte("v")})
	for name, raw := range map[string][]byte{
		"empty":                  nil,
		"one byte":               {1},
		"unknown format":         {2, 0, 100, 1, 0, 0},
		"unknown flag":           {1, 2, 100, 1, 0, 0},
		"truncated varint":       {1, 0, 0x80},
		"missing sub":            {1, 0, 100, 1, 0},
		"non-minimal varint":     {1, 0, 0xe4, 0x00, 1, 0, 0},
		"version zero":           {1, 0, 100, 0, 0, 0},
		"create zero":            {1, 0, 0, 1, 0, 0},
		"create above mod":       EncodeVersion(nil, &Version{CreateRevision: 201, Version: 1}),
		"tombstone trailing":     {1, 1, 0, 'x'},
		"tombstone without sub":  {1, 1},
		"overflowing uvarint":    {1, 0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 1, 0, 0},
		"above int64":            {1, 0, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x01, 1, 0, 0},
		"non-minimal lease zero": {1, 0, 100, 1, 0x80, 0x00, 0},
	} {
		_, err := DecodeVersion([]byte("\x02k"), 200, raw)
		assert.Error(t, err, name)
	}
	_, err := DecodeVersion([]byte("\x02k"), 200, good)
	assert.NoError(t, err)
}

func TestStatsEncoding(t *testing.T) {
	for _, s := range []Stats{{}, {1, 2, 3, 4}, {-1, -100, math.MaxInt64, math.MinInt64}} {
		got, err := DecodeStats(EncodeStats(nil, s))
		require.NoError(t, err)
		assert.Equal(t, s, got)
	}
	got, err := DecodeStats(nil)
	assert.NoError(t, err)
	assert.Equal(t, Stats{}, got)
	for _, bad := range [][]byte{{2}, {1}, {1, 2, 2, 2}, append(EncodeStats(nil, Stats{}), 0), {1, 0x80}} {
		_, err := DecodeStats(bad)
		assert.Error(t, err, "%x", bad)
	}
}

func FuzzDecodeMVCCKey(f *testing.F) {
	for _, seed := range [][]byte{
		EncodeMVCCKey(nil, UserSpanKey([]byte("a")), 100),
		EncodeMVCCKey(nil, UserSpanKey([]byte("a\x00b\x00")), 1<<60),
		EncodeMVCCKey(nil, nil, 0),
		EncodeMVCCKey(nil, []byte{0, 0, 0xff}, math.MaxInt64),
		{0, 1, 0, 0, 0, 0, 0, 0, 0, 0},
		{0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0},
		{},
		[]byte("short"),
	} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, k []byte) {
		spanKey, rev, err := DecodeMVCCKey(k)
		if err != nil {
			return
		}
		if rev < 0 {
			t.Fatalf("negative revision %d", rev)
		}
		if re := EncodeMVCCKey(nil, spanKey, rev); !bytes.Equal(re, k) {
			t.Fatalf("round trip: %x -> (%x, %d) -> %x", k, spanKey, rev, re)
		}
		// Every version of spanKey lies within its prefix bounds.
		if !bytes.HasPrefix(k, MVCCKeyPrefix(spanKey)) || bytes.Compare(k, MVCCKeyAfterVersions(spanKey)) >= 0 {
			t.Fatalf("key %x outside the bounds of its span key %x", k, spanKey)
		}
	})
}

func FuzzDecodeVersion(f *testing.F) {
	f.Add(int64(200), EncodeVersion(nil, &Version{CreateRevision: 100, Version: 2, Lease: 7, Sub: 3, Value: []byte("hello")}))
	f.Add(int64(300), EncodeVersion(nil, &Version{Tombstone: true, Sub: 9}))
	f.Add(int64(1)<<60, EncodeVersion(nil, &Version{CreateRevision: 1 << 59, Version: 1, Lease: -3}))
	f.Add(int64(math.MaxInt64), EncodeVersion(nil, &Version{CreateRevision: math.MaxInt64, Version: math.MaxInt64, Sub: math.MaxInt64}))
	f.Add(int64(5), []byte{1, 0, 0x80, 0})
	f.Add(int64(5), []byte{})
	f.Fuzz(func(t *testing.T, rev int64, raw []byte) {
		v, err := DecodeVersion([]byte("\x02key"), rev, raw)
		if err != nil {
			return
		}
		re := EncodeVersion(nil, v)
		if !bytes.Equal(re, raw) {
			t.Fatalf("round trip: %x -> %+v -> %x", raw, v, re)
		}
		v2, err := DecodeVersion([]byte("\x02key"), rev, re)
		if err != nil || !reflect.DeepEqual(v, v2) {
			t.Fatalf("re-decode: %+v vs %+v (%v)", v, v2, err)
		}
		if tomb, err := rawIsTombstone(raw); err != nil || tomb != v.Tombstone {
			t.Fatalf("rawIsTombstone = %v, %v; decoded %v", tomb, err, v.Tombstone)
		}
	})
}
