//go:build race

package loop

// raceEnabled: the race detector's instrumentation allocates and sync.Pool
// drops a share of what is put back, so allocation counts are only
// asserted without it (make test-allocs runs TestAllocs* bare).
const raceEnabled = true
