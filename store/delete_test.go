package store

import "testing"

func TestDeleteForgetsASession(t *testing.T) {
	dir := t.TempDir()
	s, _ := mustOpen(t, dir, Options{})
	for i := 1; i <= 10; i++ {
		s.Append("gone", uint64(i), body("gone", i))
		s.Append("kept", uint64(i), body("kept", i))
	}
	s.Delete("gone")
	s.Delete("never-existed") // harmless
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s2, ss := mustOpen(t, dir, Options{})
	if len(ss) != 1 || ss[0].ID != "kept" {
		t.Fatalf("recovered %v, want only kept", ss)
	}
	checkEvents(t, "kept", ss[0].Events, 1, 10)
	// A session id used again after its deletion starts afresh.
	s2.Append("gone", 1, body("gone", 1))
	if err := s2.Close(); err != nil {
		t.Fatal(err)
	}
	s3, ss := mustOpen(t, dir, Options{})
	defer s3.Close()
	if g := find(ss, "gone"); g == nil || len(g.Events) != 1 {
		t.Fatalf("a reused id was not persisted afresh: %v", ss)
	}
	if st := s3.Stats(); st.WriteErrors != 0 {
		t.Fatalf("write errors %d", st.WriteErrors)
	}
}
