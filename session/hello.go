package session

import (
	"strconv"

	"github.com/agentbridge/agentbridge/codec/jsonrpc"
	"github.com/agentbridge/agentbridge/wire"
)

// Every connection says bridge/hello once, and what it costs is set-up
// garbage that an idle connection's RSS carries until the collector runs
// (docs/architecture.md, "What an idle connection holds"). So the common
// hello is read in place and answered without an allocation of its own:
// its params are found with jsonrpc.Member, not decoded, and its answer is
// written on the stack and copied into a pooled wire.Msg that the
// connection's writer recycles. Anything unusual (a resume key, a value
// the in-place reader does not take exactly as the decoder would) goes the
// general way: decoded, and encoded with sonic, byte for byte the same.

// Where readHello's *bool points: the caller only reads through it.
var helloTrue, helloFalse = true, false

// readHello reads bridge/hello's params (borrowed, from a message Peek
// accepted; nil when absent) without decoding them. It reports false for
// anything it does not read exactly as the decoder would: a member given
// twice (the decoder keeps the last), a string with an escape or a byte
// outside printable ASCII, a value of the wrong type, an onSlow that is no
// policy. The caller then decodes, so bad input gets the decoder's error
// naming the value.
func readHello(params []byte) (p helloParams, ok bool) {
	if len(params) == 0 || string(params) == "null" {
		return p, true
	}
	if params[0] != '{' {
		return p, false
	}
	v, ok := helloMember(params, "envelope")
	switch {
	case !ok:
		return p, false
	case string(v) == "true":
		p.Envelope = &helloTrue
	case string(v) == "false":
		p.Envelope = &helloFalse
	case v != nil && string(v) != "null":
		return p, false
	}
	if v, ok = helloMember(params, "onSlow"); !ok {
		return p, false
	}
	switch string(v) {
	case "", "null", `""`:
	case `"catchup"`:
		p.OnSlow = "catchup"
	case `"degrade"`:
		p.OnSlow = "degrade"
	case `"disconnect"`:
		p.OnSlow = "disconnect"
	default:
		return p, false
	}
	if v, ok = helloMember(params, "resume"); !ok {
		return p, false
	}
	if v != nil && string(v) != "null" {
		if len(v) < 2 || v[0] != '"' || !plainJSON(v[1:len(v)-1]) {
			return p, false
		}
		key := string(v[1 : len(v)-1])
		p.Resume = &key
	}
	return p, true
}

// helloMember is the value of params' member key (nil when absent); false
// when the member is given twice.
func helloMember(params []byte, key string) ([]byte, bool) {
	start, end, dup := jsonrpc.Member(params, key)
	if dup {
		return nil, false
	}
	if start < 0 {
		return nil, true
	}
	return params[start:end], true
}

// plainJSON reports whether s reads the same inside a JSON string and out
// of it: printable ASCII with no quote and no backslash. The decoder and
// the encoder take such bytes as they are.
func plainJSON[T string | []byte](s T) bool {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c > 0x7e || c == '"' || c == '\\' {
			return false
		}
	}
	return true
}

// replyHello answers cl's bridge/hello with its connection's id, role and
// options, and rr when it resumed. Precondition: h.mu held.
func (h *Hub) replyHello(cl *Client, id []byte, rr *resumeResult) {
	role := cl.info.Role.String()
	if rr != nil || !plainJSON(h.cfg.Version) || !plainJSON(role) || !plainJSON(cl.opts.OnSlow) {
		h.replyResult(cl, id, &helloResult{Version: h.cfg.Version, ConnectionID: cl.ID, Role: role,
			Envelope: cl.opts.Envelope, OnSlow: cl.opts.OnSlow, Resume: rr})
		return
	}
	var room [256]byte
	m := wire.Spliced(appendHello(room[:0], id, h.cfg.Version, cl.ID, role, cl.opts.Envelope, cl.opts.OnSlow), -1, 0, nil)
	if !cl.closed {
		// m goes to cl's connection alone (reply, send) and nothing here
		// keeps it: its writer may recycle it once written.
		m.SingleUse()
	}
	h.reply(cl, id, m)
}

// appendHello appends the answer to a bridge/hello without a resume, as
// jsonrpc.AppendResponse writes a helloResult (TestHelloAnswerBytes). The
// strings must be plainJSON: they are written as they are.
func appendHello(dst, id []byte, version string, connID uint64, role string, envelope bool, onSlow string) []byte {
	dst = append(dst, `{"jsonrpc":"2.0","id":`...)
	dst = append(dst, id...)
	dst = append(dst, `,"result":{"version":"`...)
	dst = append(dst, version...)
	dst = append(dst, `","connectionId":`...)
	dst = strconv.AppendUint(dst, connID, 10)
	dst = append(dst, `,"role":"`...)
	dst = append(dst, role...)
	dst = append(dst, `","envelope":`...)
	dst = strconv.AppendBool(dst, envelope)
	dst = append(dst, `,"onSlow":"`...)
	dst = append(dst, onSlow...)
	return append(dst, `"}}`...)
}
