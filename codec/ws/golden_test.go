package ws

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"os"
	"strings"
	"testing"
)

// goldenVector is one example from RFC 6455 §5.7: the bytes on the wire,
// the frames that encode to them, and the events they decode to. "fill" is
// a payload of n bytes, byte i being byte(i), for the examples whose
// payload the RFC leaves unspecified.
type goldenVector struct {
	Name   string `json:"name"`
	Masked bool   `json:"masked"`
	Wire   string `json:"wire"`
	Fill   int    `json:"fill"`
	Frames []struct {
		Fin     bool   `json:"fin"`
		Op      Opcode `json:"op"`
		Key     string `json:"key"`
		Payload string `json:"payload"`
		Fill    int    `json:"fill"`
	} `json:"frames"`
	Events []goldenEvent `json:"events"`
}

type goldenEvent struct {
	Kind    string `json:"kind"`
	Payload string `json:"payload"`
	Fill    int    `json:"fill"`
}

func fill(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i)
	}
	return b
}

func unhex(tb testing.TB, s string) []byte {
	tb.Helper()
	b, err := hex.DecodeString(strings.ReplaceAll(s, " ", ""))
	if err != nil {
		tb.Fatal(err)
	}
	return b
}

func (v goldenVector) wire(tb testing.TB) []byte {
	return append(unhex(tb, v.Wire), fill(v.Fill)...)
}

func (e goldenEvent) payload(tb testing.TB) []byte {
	if e.Fill > 0 {
		return fill(e.Fill)
	}
	return []byte(e.Payload)
}

func (e goldenEvent) kind(tb testing.TB) EventKind {
	for k := EventNone; k <= EventClose; k++ {
		if k.String() == e.Kind {
			return k
		}
	}
	tb.Fatalf("unknown event kind %q", e.Kind)
	return EventNone
}

func loadGolden(tb testing.TB) []goldenVector {
	tb.Helper()
	data, err := os.ReadFile("testdata/rfc6455-5.7.json")
	if err != nil {
		tb.Fatal(err)
	}
	var vs []goldenVector
	if err := json.Unmarshal(data, &vs); err != nil {
		tb.Fatal(err)
	}
	if len(vs) != 7 {
		tb.Fatalf("%d golden vectors, want the 7 of RFC 6455 §5.7", len(vs))
	}
	return vs
}

// The writers reproduce the RFC's bytes exactly.
func TestAppendGolden(t *testing.T) {
	for _, v := range loadGolden(t) {
		t.Run(v.Name, func(t *testing.T) {
			var out []byte
			for _, f := range v.Frames {
				p := []byte(f.Payload)
				if f.Fill > 0 {
					p = fill(f.Fill)
				}
				if f.Key != "" {
					out = AppendMaskedFrame(out, f.Fin, f.Op, [4]byte(unhex(t, f.Key)), p)
				} else {
					out = AppendFrame(out, f.Fin, f.Op, p)
				}
			}
			if want := v.wire(t); !bytes.Equal(out, want) {
				t.Fatalf("encoded\n% x\nwant\n% x", out[:min(len(out), 16)], want[:min(len(want), 16)])
			}
		})
	}
}
