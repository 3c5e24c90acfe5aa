package main

import "testing"

func TestMemoryLimit(t *testing.T) {
	for _, c := range []struct {
		replay int
		env    string
		want   int64
	}{
		{64 << 20, "", 128 << 20}, // the default budget: twice it
		{1 << 30, "", 2 << 30},    // a large budget: twice it
		{1 << 20, "", 65 << 20},   // a small budget: the minimum headroom
		{64 << 20, "1GiB", 0},     // the user's limit stands
		{64 << 20, "off", 0},      // and so does the user's "off"
	} {
		if got := memoryLimit(c.replay, c.env); got != c.want {
			t.Errorf("memoryLimit(%d, %q) = %d, want %d", c.replay, c.env, got, c.want)
		}
	}
}
