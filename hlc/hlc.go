// Package hlc is the node's hybrid logical clock. A timestamp is the int64
// physical_ms<<20 | logical (logical < 2^20), the encoding etcd clients see
// as revisions (DESIGN.md, "Revisions: a hybrid logical clock"). The clock
// follows Kulkarni et al., "Logical Physical Clocks" (2014), §3: Now is
// strictly increasing, and Update folds in every timestamp the node
// receives so causally later events get larger timestamps.
package hlc

import (
	"errors"
	"fmt"
	"sync"
	"time"
)

// LogicalBits is the width of the logical counter.
const LogicalBits = 20

const logicalMask = 1<<LogicalBits - 1

// Timestamp is an HLC value, physical milliseconds << 20 | logical.
type Timestamp = int64

// Make builds a timestamp from wall milliseconds and a logical counter.
func Make(physicalMS int64, logical int64) Timestamp {
	return physicalMS<<LogicalBits | logical&logicalMask
}

// Physical returns the wall-clock milliseconds of ts.
func Physical(ts Timestamp) int64 { return ts >> LogicalBits }

// Logical returns the logical counter of ts.
func Logical(ts Timestamp) int64 { return ts & logicalMask }

// Format renders ts as "<RFC3339 ms>/<logical>" for logs.
func Format(ts Timestamp) string {
	return fmt.Sprintf("%s/%d", time.UnixMilli(Physical(ts)).UTC().Format("2006-01-02T15:04:05.000Z"), Logical(ts))
}

// ErrClockOffset is returned by Update when a remote timestamp is ahead of
// the local wall clock by more than the maximum offset.
var ErrClockOffset = errors.New("remote clock is ahead of the local clock by more than --max-clock-offset")

// Clock is a hybrid logical clock. It is safe for concurrent use.
// Invariant: every value returned by Now is greater than every value
// previously returned by Now or passed to Update.
type Clock struct {
	mu        sync.Mutex
	wallMS    func() int64
	maxOffset time.Duration
	last      Timestamp
}

// New returns a clock reading wall time from time.Now. maxOffset bounds the
// skew Update accepts; 0 disables the check.
func New(maxOffset time.Duration) *Clock {
	return &Clock{wallMS: func() int64 { return time.Now().UnixMilli() }, maxOffset: maxOffset}
}

// NewWithWall is New with an injected wall clock (milliseconds), for tests.
func NewWithWall(wallMS func() int64, maxOffset time.Duration) *Clock {
	return &Clock{wallMS: wallMS, maxOffset: maxOffset}
}

// Now returns a timestamp greater than every timestamp the clock has issued
// or observed.
func (c *Clock) Now() Timestamp {
	c.mu.Lock()
	defer c.mu.Unlock()
	wall := Make(c.wallMS(), 0)
	if wall > c.last {
		c.last = wall
	} else {
		c.last++
	}
	return c.last
}

// WallMS returns the wall-clock reading (Unix milliseconds) the clock
// is built on, without the logical part or anything observed from peers.
func (c *Clock) WallMS() int64 { return c.wallMS() }

// Offset returns how far a peer's wall clock reading remoteWallMS (Unix
// milliseconds, read when it sent) is ahead of this clock's wall clock
// (negative when behind), ignoring transit time.
func (c *Clock) Offset(remoteWallMS int64) time.Duration {
	return time.Duration(remoteWallMS-c.wallMS()) * time.Millisecond
}

// Peek returns the last timestamp issued or observed without advancing.
func (c *Clock) Peek() Timestamp {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.last
}

// Update folds a timestamp received from a peer or client into the clock.
// It returns ErrClockOffset (and does not advance) when remote is ahead of
// local wall time by more than the maximum offset.
func (c *Clock) Update(remote Timestamp) error {
	if remote <= 0 {
		return nil
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.maxOffset > 0 {
		ahead := time.Duration(Physical(remote)-c.wallMS()) * time.Millisecond
		if ahead > c.maxOffset {
			return fmt.Errorf("%w: %s ahead", ErrClockOffset, ahead)
		}
	}
	if remote > c.last {
		c.last = remote
	}
	return nil
}
