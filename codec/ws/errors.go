package ws

import "strconv"

// CloseCode is a WebSocket close status code (RFC 6455 §7.4). It implements
// error so that a protocol failure carries the code to send in the close
// frame; match it with errors.Is, never by text.
type CloseCode uint16

// Close codes. CloseNoStatus and CloseAbnormal are never sent on the wire:
// they describe an empty close frame and a connection lost without one.
const (
	CloseNormal          CloseCode = 1000
	CloseGoingAway       CloseCode = 1001
	CloseProtocolError   CloseCode = 1002
	CloseUnsupportedData CloseCode = 1003
	CloseNoStatus        CloseCode = 1005
	CloseAbnormal        CloseCode = 1006
	CloseInvalidPayload  CloseCode = 1007
	ClosePolicyViolation CloseCode = 1008
	CloseTooBig          CloseCode = 1009
	CloseMandatoryExt    CloseCode = 1010
	CloseInternalError   CloseCode = 1011
	CloseServiceRestart  CloseCode = 1012
	CloseTryAgainLater   CloseCode = 1013
	CloseBadGateway      CloseCode = 1014
)

// String names the code for logs and metrics: "protocol error".
func (c CloseCode) String() string {
	switch c {
	case CloseNormal:
		return "normal closure"
	case CloseGoingAway:
		return "going away"
	case CloseProtocolError:
		return "protocol error"
	case CloseUnsupportedData:
		return "unsupported data"
	case CloseNoStatus:
		return "no status"
	case CloseAbnormal:
		return "abnormal closure"
	case CloseInvalidPayload:
		return "invalid payload data"
	case ClosePolicyViolation:
		return "policy violation"
	case CloseTooBig:
		return "message too big"
	case CloseMandatoryExt:
		return "mandatory extension"
	case CloseInternalError:
		return "internal error"
	case CloseServiceRestart:
		return "service restart"
	case CloseTryAgainLater:
		return "try again later"
	case CloseBadGateway:
		return "bad gateway"
	}
	switch {
	case c >= 3000 && c <= 3999:
		return "registered"
	case c >= 4000 && c <= 4999:
		return "private"
	}
	return "unknown"
}

// Error gives "ws: close 1002 protocol error".
func (c CloseCode) Error() string {
	return "ws: close " + strconv.Itoa(int(c)) + " " + c.String()
}

// ValidOnWire reports whether a peer may send c in a close frame: 1000-1003,
// 1007-1014 and 3000-4999. 1004 is reserved, 1005, 1006 and 1015 are
// reserved for local use, the rest of 1016-2999 is unassigned.
func (c CloseCode) ValidOnWire() bool {
	switch {
	case c >= 1000 && c <= 1003:
		return true
	case c >= 1007 && c <= 1014:
		return true
	case c >= 3000 && c <= 4999:
		return true
	}
	return false
}

// ProtocolError is a violation of RFC 6455 by the peer. Code is what the
// close frame must carry; Reason is a short ASCII detail that fits in one
// (at most 123 bytes).
type ProtocolError struct {
	Code   CloseCode
	Reason string
}

// Error gives "ws: close 1002 protocol error: <reason>".
func (e *ProtocolError) Error() string {
	return e.Code.Error() + ": " + e.Reason
}

// Unwrap returns the close code, so errors.Is(err, CloseTooBig) works.
func (e *ProtocolError) Unwrap() error { return e.Code }
