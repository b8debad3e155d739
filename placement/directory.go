package placement

// Versioned is a range descriptor or a view of one (txnproto's
// RangeDescriptor and RangeInfo both are).
type Versioned interface {
	GetRangeId() uint64
	GetGeneration() uint64
}

// Supersedes reports whether descriptor a replaces b: as the directory
// record stored under their common end key in the meta range, and in a
// range cache when their spans overlap.
//
// Without merges, ownership of an end key only ever passes from a range
// to the right-hand side split off it, and that side's range ID was
// allocated after the left range existed, so it is larger; a range's own
// descriptor changes bump its generation. The order (range ID, then
// generation) therefore never goes backward, and writers that apply it
// with a compare-and-swap converge on the newest descriptor whatever order
// their writes land in.
func Supersedes[T Versioned](a, b T) bool {
	if a.GetRangeId() != b.GetRangeId() {
		return a.GetRangeId() > b.GetRangeId()
	}
	return a.GetGeneration() > b.GetGeneration()
}
