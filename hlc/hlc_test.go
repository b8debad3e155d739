package hlc

import (
	"errors"
	"testing"
	"time"
)

func TestNowStrictlyIncreasingWhenWallStalls(t *testing.T) {
	wall := int64(1_000)
	c := NewWithWall(func() int64 { return wall }, 0)
	prev := c.Now()
	for i := 0; i < 1000; i++ {
		ts := c.Now()
		if ts <= prev {
			t.Fatalf("Now went from %d to %d", prev, ts)
		}
		prev = ts
	}
	if Physical(prev) != wall || Logical(prev) != 1000 {
		t.Fatalf("got %s, want physical %d logical 1000", Format(prev), wall)
	}
	wall = 900 // wall clock steps back
	if ts := c.Now(); ts <= prev {
		t.Fatalf("Now went backwards after wall step back: %d <= %d", ts, prev)
	}
}

func TestUpdateAdvancesPastRemote(t *testing.T) {
	c := NewWithWall(func() int64 { return 1_000 }, time.Second)
	remote := Make(1_500, 7)
	if err := c.Update(remote); err != nil {
		t.Fatal(err)
	}
	if ts := c.Now(); ts <= remote {
		t.Fatalf("Now %s not after remote %s", Format(ts), Format(remote))
	}
}

func TestUpdateRejectsLargeOffset(t *testing.T) {
	c := NewWithWall(func() int64 { return 1_000 }, 500*time.Millisecond)
	if err := c.Update(Make(1_501, 0)); !errors.Is(err, ErrClockOffset) {
		t.Fatalf("want ErrClockOffset, got %v", err)
	}
	if c.Peek() != 0 {
		t.Fatalf("rejected update advanced the clock")
	}
}

func TestOffset(t *testing.T) {
	wall := int64(1_000_000)
	c := NewWithWall(func() int64 { return wall }, 500*time.Millisecond)
	if got := c.Offset(wall + 700); got != 700*time.Millisecond {
		t.Fatalf("Offset ahead = %v, want 700ms", got)
	}
	if got := c.Offset(wall - 250); got != -250*time.Millisecond {
		t.Fatalf("Offset behind = %v, want -250ms", got)
	}
}
