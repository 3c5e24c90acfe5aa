package lograte

import (
	"testing"
	"time"
)

func TestEverySecond(t *testing.T) {
	var e EverySecond
	t0 := time.Unix(1000, 0)
	if ok, n := e.Allow(t0); !ok || n != 0 {
		t.Fatalf("first line: %v %d", ok, n)
	}
	for i := 1; i <= 5; i++ {
		if ok, _ := e.Allow(t0.Add(time.Duration(i) * 100 * time.Millisecond)); ok {
			t.Fatalf("line %d within the second let through", i)
		}
	}
	if ok, n := e.Allow(t0.Add(time.Second)); !ok || n != 5 {
		t.Fatalf("after a second: %v, held %d, want true, 5", ok, n)
	}
	if ok, n := e.Allow(t0.Add(2100 * time.Millisecond)); !ok || n != 0 {
		t.Fatalf("a second later with nothing held: %v %d", ok, n)
	}
}
