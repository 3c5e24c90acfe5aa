package ws

import (
	"fmt"
	"testing"
)

func BenchmarkReaderNext(b *testing.B) {
	for _, size := range []int{100, 4096} {
		frame := mf(true, OpText, pattern(size, true))
		b.Run(fmt.Sprintf("masked_text_%dB", size), func(b *testing.B) {
			r := &Reader{RequireMask: true}
			b.SetBytes(int64(len(frame)))
			b.ReportAllocs()
			for b.Loop() {
				ev, n, err := r.Next(frame)
				if err != nil || ev.Kind != EventText || n != len(frame) {
					b.Fatalf("kind=%v n=%d err=%v", ev.Kind, n, err)
				}
			}
		})
	}
	// The same 4 KiB frame arriving in 1460-byte segments.
	frame := mf(true, OpText, pattern(4096, true))
	b.Run("masked_text_4096B_segmented", func(b *testing.B) {
		r := &Reader{RequireMask: true}
		b.SetBytes(int64(len(frame)))
		b.ReportAllocs()
		for b.Loop() {
			rest := frame
			for len(rest) > 0 {
				_, n, err := r.Next(rest[:min(len(rest), 1460)])
				if err != nil {
					b.Fatal(err)
				}
				rest = rest[n:]
			}
		}
	})
}

func BenchmarkAppendFrame(b *testing.B) {
	for _, size := range []int{100, 4096} {
		payload := []byte(pattern(size, true))
		b.Run(fmt.Sprintf("%dB", size), func(b *testing.B) {
			dst := make([]byte, 0, size+16)
			b.SetBytes(int64(size))
			b.ReportAllocs()
			for b.Loop() {
				dst = AppendFrame(dst[:0], true, OpText, payload)
			}
		})
	}
}

func BenchmarkMaskBytes(b *testing.B) {
	data := fill(4096)
	b.SetBytes(int64(len(data)))
	for b.Loop() {
		maskBytes(testKey, 1, data)
	}
}
