package ws

import (
	"slices"
	"testing"
)

// fuzzSeeds are valid and invalid frame sequences; each is also seeded with
// every chunk size, so the seed corpus alone splits them at every byte.
func fuzzSeeds() [][]byte {
	return [][]byte{
		mf(true, OpText, "Hello"),
		uf(true, OpText, "Hello"),
		cat(mf(false, OpText, "Hel"), mf(true, OpPing, "p"), mf(true, OpContinuation, "lo")),
		cat(mf(false, OpText, "κό\xcf"), mf(true, OpContinuation, "\x83με")),
		cat(mf(false, OpText, "κό\xed"), mf(true, OpContinuation, "\xa0\x80")),
		mf(true, OpText, "\xf4\x90\x80\x80"),
		mf(true, OpBinary, pattern(200, false)),
		cat(mf(true, OpBinary, ""), mf(true, OpPong, ""), mf(true, OpText, "")),
		mf(true, OpClose, closePayload(1000, "bye")),
		mf(true, OpClose, closePayload(1005, "")),
		mf(true, OpClose, "\x03"),
		mf(true, OpClose, closePayload(1000, "\xff")),
		mf(false, OpPing, "x"),
		mf(true, 0x3, "reserved"),
		cat(mf(true, OpText, "a"), mf(true, OpContinuation, "b")),
		cat(mf(false, OpText, "a"), mf(true, OpBinary, "b")),
		rawFrame(0xC1, []byte{5}, "Hello"),
		rawFrame(0x81, []byte{126, 0, 5}, "Hello"),
		rawFrame(0x82, []byte{127, 0x80, 0, 0, 0, 0, 0, 0, 1}, "x"),
		rawFrame(0x82, []byte{127, 0, 0, 0, 0, 0x01, 0, 0, 1}, ""),
	}
}

func FuzzReader(f *testing.F) {
	for _, s := range fuzzSeeds() {
		for chunk := 1; chunk <= len(s); chunk++ {
			f.Add(s, uint8(chunk), true, uint16(0))
		}
		f.Add(s, uint8(3), false, uint16(4))
	}
	f.Fuzz(func(t *testing.T, data []byte, chunk uint8, requireMask bool, maxMessage uint16) {
		mk := func() *Reader { return &Reader{RequireMask: requireMask, MaxMessage: int(maxMessage)} }
		wantEvents, wantErr := feedWhole(t, mk(), data)
		if wantErr != nil {
			switch errCode(wantErr) {
			case CloseProtocolError, CloseInvalidPayload, CloseTooBig:
			default:
				t.Fatalf("error %v is not a *ProtocolError with a receive-side code", wantErr)
			}
		}
		for _, c := range []int{1, int(chunk)} {
			if c == 0 {
				continue
			}
			for _, inPlace := range []bool{false, true} {
				r := mk()
				r.InPlace = inPlace
				events, err, _ := feedChunked(t, r, data, c)
				if !slices.Equal(events, wantEvents) {
					t.Fatalf("chunk %d (in place %v): events %s, whole feeding gave %s", c, inPlace, brief(events), brief(wantEvents))
				}
				if errCode(err) != errCode(wantErr) {
					t.Fatalf("chunk %d (in place %v): error %v, whole feeding gave %v", c, inPlace, err, wantErr)
				}
			}
		}
	})
}
