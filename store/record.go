package store

import (
	"encoding/binary"
	"fmt"
	"hash/crc32"
)

const (
	headerLen  = 19
	kindCreate = 'C' // a session exists; body: its creation time (unix ns, 8 bytes LE)
	kindEvent  = 'E' // one event; body: the message
	kindMark   = 'H' // high-water mark: seqs up to here were used (body empty)
	kindDelete = 'D' // tombstone: the session was deleted (body empty)
	// segMagic starts every segment file.
	segMagic = "ABLOG2\n\x00"
	// maxBody bounds a record's body; a larger length field is corruption.
	maxBody = 1 << 30
	// maxID bounds a session id (its length is a uint16).
	maxID = 1<<16 - 1
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// recordSize is the on-disk size of a record.
func recordSize(id string, body []byte) int64 { return int64(headerLen + len(id) + len(body)) }

// appendRecord appends one framed record to dst:
//
//	crc32c  uint32 LE   over everything after it
//	length  uint32 LE   of body
//	kind    byte
//	seq     uint64 LE
//	idlen   uint16 LE   of the session id
//	id      [idlen]byte
//	body    [length]byte
func appendRecord(dst []byte, kind byte, id string, seq uint64, body []byte) []byte {
	start := len(dst)
	dst = append(dst, make([]byte, headerLen)...)
	h := dst[start:]
	binary.LittleEndian.PutUint32(h[4:], uint32(len(body)))
	h[8] = kind
	binary.LittleEndian.PutUint64(h[9:], seq)
	binary.LittleEndian.PutUint16(h[17:], uint16(len(id)))
	dst = append(dst, id...)
	dst = append(dst, body...)
	binary.LittleEndian.PutUint32(dst[start:], crc32.Checksum(dst[start+4:], castagnoli))
	return dst
}

// record is one decoded record; id and body are borrowed from the buffer.
type record struct {
	kind byte
	id   string
	seq  uint64
	body []byte
	raw  []byte // the whole framed record
}

// parseRecords decodes the records of a segment's content (after the
// magic) and calls fn for each valid one. It returns how many bytes are
// valid records, and ErrCorrupt (wrapped with the reason) if it stopped
// before the end.
func parseRecords(data []byte, fn func(record)) (int, error) {
	off := 0
	for off < len(data) {
		rest := data[off:]
		if len(rest) < headerLen {
			return off, fmt.Errorf("%w: %d-byte partial header at offset %d", ErrCorrupt, len(rest), off)
		}
		n := binary.LittleEndian.Uint32(rest[4:])
		idn := int(binary.LittleEndian.Uint16(rest[17:]))
		if n > maxBody || int(n)+idn > len(rest)-headerLen {
			return off, fmt.Errorf("%w: length %d past the end at offset %d", ErrCorrupt, n, off)
		}
		end := headerLen + idn + int(n)
		if crc32.Checksum(rest[4:end], castagnoli) != binary.LittleEndian.Uint32(rest) {
			return off, fmt.Errorf("%w: checksum mismatch at offset %d", ErrCorrupt, off)
		}
		kind := rest[8]
		if kind != kindEvent && kind != kindMark && kind != kindCreate && kind != kindDelete {
			return off, fmt.Errorf("%w: unknown kind %q at offset %d", ErrCorrupt, kind, off)
		}
		fn(record{kind: kind, id: string(rest[headerLen : headerLen+idn]), seq: binary.LittleEndian.Uint64(rest[9:]),
			body: rest[headerLen+idn : end], raw: rest[:end]})
		off += end
	}
	return off, nil
}
