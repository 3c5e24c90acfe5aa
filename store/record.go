package store

import (
	"encoding/binary"
	"fmt"
	"hash/crc32"
)

const (
	headerLen = 17
	kindEvent = 'E'
	kindMark  = 'H'
	// segMagic starts every segment file.
	segMagic = "ABSEG1\n\x00"
	// maxBody bounds a record's body; a larger length field is corruption.
	maxBody = 1 << 30
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// appendRecord appends one framed record to dst.
func appendRecord(dst []byte, kind byte, seq uint64, body []byte) []byte {
	start := len(dst)
	dst = append(dst, make([]byte, headerLen)...)
	h := dst[start:]
	binary.LittleEndian.PutUint32(h[4:], uint32(len(body)))
	h[8] = kind
	binary.LittleEndian.PutUint64(h[9:], seq)
	crc := crc32.Update(0, castagnoli, h[4:headerLen])
	crc = crc32.Update(crc, castagnoli, body)
	binary.LittleEndian.PutUint32(h[0:], crc)
	return append(dst, body...)
}

// record is one decoded record; body is borrowed from the segment buffer.
type record struct {
	kind byte
	seq  uint64
	body []byte
}

// parseRecords decodes the records of a segment's content (after the
// magic) and calls fn for each valid one. It returns how many bytes of data
// are valid records, and ErrCorrupt (wrapped with the reason) if it stopped
// before the end.
func parseRecords(data []byte, fn func(record)) (int, error) {
	off := 0
	for off < len(data) {
		rest := data[off:]
		if len(rest) < headerLen {
			return off, fmt.Errorf("%w: %d-byte partial header at offset %d", ErrCorrupt, len(rest), off)
		}
		n := binary.LittleEndian.Uint32(rest[4:])
		if n > maxBody || int(n) > len(rest)-headerLen {
			return off, fmt.Errorf("%w: length %d past the end at offset %d", ErrCorrupt, n, off)
		}
		end := headerLen + int(n)
		if crc32.Checksum(rest[4:end], castagnoli) != binary.LittleEndian.Uint32(rest) {
			return off, fmt.Errorf("%w: checksum mismatch at offset %d", ErrCorrupt, off)
		}
		kind := rest[8]
		if kind != kindEvent && kind != kindMark {
			return off, fmt.Errorf("%w: unknown kind %q at offset %d", ErrCorrupt, kind, off)
		}
		fn(record{kind: kind, seq: binary.LittleEndian.Uint64(rest[9:]), body: rest[headerLen:end]})
		off += end
	}
	return off, nil
}
