package milter

import (
	"context"
	"errors"
	"testing"
	"time"
)

// TestLazyDeadline: the context ends at its deadline like
// context.WithDeadline, whether or not anything waited for it, and makes
// no timer when nothing does.
func TestLazyDeadline(t *testing.T) {
	t.Run("nothing waits", func(t *testing.T) {
		c := newLazyDeadline(time.Hour)
		if d, ok := c.Deadline(); !ok || time.Until(d) < 59*time.Minute {
			t.Errorf("Deadline() = %v, %v", d, ok)
		}
		if err := c.Err(); err != nil {
			t.Errorf("Err() before the deadline = %v", err)
		}
		if c.made.Load() {
			t.Error("a timer was made although nothing waited")
		}
		c.stop()
		if err := c.Err(); !errors.Is(err, context.Canceled) {
			t.Errorf("Err() after stop = %v, want context.Canceled", err)
		}
		select {
		case <-c.Done():
		default:
			t.Error("Done() not closed after stop")
		}
	})
	t.Run("deadline passes unwatched", func(t *testing.T) {
		c := newLazyDeadline(time.Millisecond)
		defer c.stop()
		time.Sleep(5 * time.Millisecond)
		if err := c.Err(); !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("Err() after the deadline = %v, want DeadlineExceeded", err)
		}
		select {
		case <-c.Done():
		default:
			t.Error("Done() not closed after the deadline")
		}
	})
	t.Run("waited for", func(t *testing.T) {
		c := newLazyDeadline(20 * time.Millisecond)
		defer c.stop()
		// As the lookups see it: under a value (keys.WithSnapshot).
		ctx := context.WithValue(c, struct{}{}, 1)
		start := time.Now()
		select {
		case <-ctx.Done():
		case <-time.After(5 * time.Second):
			t.Fatal("Done() not closed at the deadline")
		}
		if took := time.Since(start); took < 15*time.Millisecond {
			t.Errorf("ended after %v, want about 20ms", took)
		}
		if err := context.Cause(ctx); !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("Cause = %v, want DeadlineExceeded", err)
		}
	})
	t.Run("stopped while waited for", func(t *testing.T) {
		c := newLazyDeadline(time.Hour)
		done := c.Done()
		c.stop()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			t.Fatal("Done() not closed by stop")
		}
		if err := c.Err(); !errors.Is(err, context.Canceled) {
			t.Errorf("Err() = %v, want context.Canceled", err)
		}
	})
}
