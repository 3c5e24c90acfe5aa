package store

import (
	"encoding/binary"
	"errors"
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
	off  int    // where it starts in the data given to parseRecords
}

// errShort means the data ends inside a record: the caller reads more (a
// ranged read) or has found a torn tail (recovery).
var errShort = errors.New("store: record continues past the data")

// decodeRecord decodes the record at the start of rest. It returns the
// record's size with the record (id and body borrowed from rest, id as its
// bytes: the caller decides whether it needs a string), errShort (with the
// size the whole record needs, or 0 while even its header is incomplete)
// when rest ends inside it, or ErrCorrupt (wrapped) for a bad record.
func decodeRecord(rest []byte) (kind byte, id []byte, seq uint64, body []byte, size int, err error) {
	if len(rest) < headerLen {
		return 0, nil, 0, nil, 0, errShort
	}
	n := binary.LittleEndian.Uint32(rest[4:])
	idn := int(binary.LittleEndian.Uint16(rest[17:]))
	if n > maxBody {
		return 0, nil, 0, nil, 0, fmt.Errorf("%w: length %d over the limit", ErrCorrupt, n)
	}
	size = headerLen + idn + int(n)
	if size > len(rest) {
		return 0, nil, 0, nil, size, errShort
	}
	if crc32.Checksum(rest[4:size], castagnoli) != binary.LittleEndian.Uint32(rest) {
		return 0, nil, 0, nil, 0, fmt.Errorf("%w: checksum mismatch", ErrCorrupt)
	}
	kind = rest[8]
	if kind != kindEvent && kind != kindMark && kind != kindCreate && kind != kindDelete {
		return 0, nil, 0, nil, 0, fmt.Errorf("%w: unknown kind %q", ErrCorrupt, kind)
	}
	return kind, rest[headerLen : headerLen+idn], binary.LittleEndian.Uint64(rest[9:]), rest[headerLen+idn : size], size, nil
}

// parseRecords decodes the records of a segment's content (after the
// magic) and calls fn for each valid one. It returns how many bytes are
// valid records, and ErrCorrupt (wrapped with the reason) if it stopped
// before the end.
func parseRecords(data []byte, fn func(record)) (int, error) {
	off := 0
	for off < len(data) {
		rest := data[off:]
		kind, id, seq, body, size, err := decodeRecord(rest)
		if err == errShort {
			if size == 0 {
				return off, fmt.Errorf("%w: %d-byte partial header at offset %d", ErrCorrupt, len(rest), off)
			}
			return off, fmt.Errorf("%w: length %d past the end at offset %d", ErrCorrupt, size-headerLen, off)
		}
		if err != nil {
			return off, fmt.Errorf("%w at offset %d", err, off)
		}
		fn(record{kind: kind, id: string(id), seq: seq, body: body, raw: rest[:size], off: off})
		off += size
	}
	return off, nil
}
