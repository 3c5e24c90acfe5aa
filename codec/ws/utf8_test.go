package ws

import (
	"testing"
	"unicode/utf8"
)

// checkValidator feeds s in the given pieces and compares each step with the
// reference: a write fails exactly when the bytes so far stop being a prefix
// of valid UTF-8, and the end is accepted exactly when s is valid.
func checkValidator(t testing.TB, s []byte, cuts []int) {
	t.Helper()
	var v utf8Validator
	prev := 0
	for _, c := range append(cuts, len(s)) {
		ok := v.write(s[prev:c])
		if want := validPrefix(s[:c]); ok != want {
			t.Fatalf("%q cut at %v: write up to %d = %v, want %v", s, cuts, c, ok, want)
		}
		if !ok {
			return
		}
		prev = c
	}
	if got, want := v.complete(), utf8.Valid(s); got != want {
		t.Fatalf("%q cut at %v: complete = %v, want %v", s, cuts, got, want)
	}
}

func TestUTF8ValidatorEverySplit(t *testing.T) {
	for _, u := range utf8Cases {
		s := []byte(u.s)
		checkValidator(t, s, nil)
		for i := 0; i <= len(s); i++ {
			checkValidator(t, s, []int{i})
			for j := i; j <= len(s) && j < i+5; j++ {
				checkValidator(t, s, []int{i, j})
			}
		}
		var each []int
		for i := 1; i < len(s); i++ {
			each = append(each, i)
		}
		checkValidator(t, s, each)
	}
}

// Every one- and two-byte sequence, and three-byte sequences after every
// multi-byte lead and second byte, byte by byte and whole.
func TestUTF8ValidatorExhaustiveShort(t *testing.T) {
	for a := range 256 {
		checkValidator(t, []byte{byte(a)}, nil)
		for b := range 256 {
			checkValidator(t, []byte{byte(a), byte(b)}, nil)
			checkValidator(t, []byte{byte(a), byte(b)}, []int{1})
			if a >= 0xE0 && a <= 0xF4 {
				// Third bytes have no lead-specific range: test its edges.
				for _, c := range []int{0x00, 0x7F, 0x80, 0xBF, 0xC0, 0xFF} {
					checkValidator(t, []byte{byte(a), byte(b), byte(c)}, []int{1, 2})
					checkValidator(t, []byte{byte(a), byte(b), byte(c), 'x'}, nil)
				}
			}
		}
	}
}

func FuzzUTF8Validator(f *testing.F) {
	for _, u := range utf8Cases {
		f.Add([]byte(u.s), uint8(1), uint8(3))
	}
	f.Fuzz(func(t *testing.T, s []byte, a, b uint8) {
		i := min(int(a), len(s))
		j := min(i+int(b), len(s))
		checkValidator(t, s, []int{i, j})
	})
}
