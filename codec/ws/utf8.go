package ws

import "unicode/utf8"

// utf8Validator checks a text message as it arrives, fragment by fragment
// and chunk by chunk. It rejects as soon as the bytes seen so far cannot be
// the start of valid UTF-8, and its verdict does not depend on where the
// stream was cut. The zero value is ready at the start of a message.
type utf8Validator struct {
	// need is how many continuation bytes the current sequence still needs.
	need uint8
	// lo and hi bound the next continuation byte: tighter than 0x80-0xBF
	// right after E0, ED, F0 and F4, which is how overlongs, surrogates and
	// code points above U+10FFFF are refused before their last byte.
	lo, hi byte
}

// write validates the next bytes of the message.
func (v *utf8Validator) write(p []byte) bool {
	for v.need > 0 && len(p) > 0 {
		if !v.step(p[0]) {
			return false
		}
		p = p[1:]
	}
	if len(p) == 0 {
		return true
	}
	// The bulk goes through utf8.Valid (ASCII runs are checked a word at a
	// time); only a sequence cut off at the end of p is walked by hand so
	// that its state carries into the next write.
	tail := incompleteTail(p)
	if !utf8.Valid(p[:tail]) {
		return false
	}
	for _, b := range p[tail:] {
		if !v.step(b) {
			return false
		}
	}
	return true
}

// complete reports whether the message may end here, with no sequence open.
func (v *utf8Validator) complete() bool { return v.need == 0 }

func (v *utf8Validator) step(b byte) bool {
	if v.need > 0 {
		if b < v.lo || b > v.hi {
			return false
		}
		v.need--
		v.lo, v.hi = 0x80, 0xBF
		return true
	}
	v.lo, v.hi = 0x80, 0xBF
	switch {
	case b < 0x80:
		return true
	case b < 0xC2: // continuation without a lead, or an overlong 2-byte lead
		return false
	case b < 0xE0:
		v.need = 1
	case b < 0xF0:
		v.need = 2
		switch b {
		case 0xE0:
			v.lo = 0xA0 // below is an overlong 3-byte form
		case 0xED:
			v.hi = 0x9F // above is a UTF-16 surrogate
		}
	case b < 0xF5:
		v.need = 3
		switch b {
		case 0xF0:
			v.lo = 0x90 // below is an overlong 4-byte form
		case 0xF4:
			v.hi = 0x8F // above is past U+10FFFF
		}
	default:
		return false
	}
	return true
}

// incompleteTail returns the index where a multi-byte sequence that runs
// past the end of p starts, or len(p) if p does not end inside one. Invalid
// bytes are left for the caller's checks to reject.
func incompleteTail(p []byte) int {
	for i := len(p) - 1; i >= 0 && i >= len(p)-3; i-- {
		b := p[i]
		if b < 0x80 {
			return len(p)
		}
		if b < 0xC0 {
			continue // continuation byte: the lead is further back
		}
		n := 4
		switch {
		case b < 0xE0:
			n = 2
		case b < 0xF0:
			n = 3
		}
		if i+n > len(p) {
			return i
		}
		return len(p)
	}
	return len(p)
}
