package ws

import (
	"crypto/sha1"
	"encoding/base64"
	"net/http"
	"strconv"
	"strings"
)

// acceptGUID is the fixed GUID RFC 6455 §1.3 appends to the client's key.
const acceptGUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

// Version is the only Sec-WebSocket-Version this package speaks.
const Version = "13"

// The handshake's fields in http.Header's canonical form: Header.Get and
// Values canonicalise any other spelling ("Sec-WebSocket-Key") into a fresh
// string on every call.
const (
	hdrKey     = "Sec-Websocket-Key"
	hdrVersion = "Sec-Websocket-Version"
)

// AcceptKey derives Sec-WebSocket-Accept from the client's Sec-WebSocket-Key.
// It is pure and safe from any goroutine.
func AcceptKey(secWebSocketKey string) string {
	return string(appendAccept(nil, secWebSocketKey))
}

func appendAccept(dst []byte, key string) []byte {
	// On the stack for a valid key (24 characters): no hash object and no
	// copies on the heap for each handshake.
	var in [64]byte
	b := append(append(in[:0], key...), acceptGUID...)
	sum := sha1.Sum(b)
	return base64.StdEncoding.AppendEncode(dst, sum[:])
}

// CheckHandshake validates a parsed opening handshake (RFC 6455 §4.2.1).
// It returns 0 and "" for a valid upgrade request; otherwise the HTTP status
// to refuse it with and a reason a person can act on:
//
//   - 400 for a method other than GET, HTTP older than 1.1, a missing Host,
//     an Upgrade header without "websocket", a Connection header without
//     "upgrade", or a Sec-WebSocket-Key that is missing, repeated or not the
//     base64 encoding of 16 bytes;
//   - 426 for a Sec-WebSocket-Version other than 13 (or none), which must be
//     answered with "Sec-WebSocket-Version: 13"; AppendHandshakeError does.
//
// It does not judge Origin, tokens or the path: those are the caller's
// policy. It is pure and safe from any goroutine.
func CheckHandshake(r *http.Request) (status int, reason string) {
	if r.Method != http.MethodGet {
		return http.StatusBadRequest, "websocket handshake must use GET, not " + r.Method
	}
	if !r.ProtoAtLeast(1, 1) {
		return http.StatusBadRequest, "websocket handshake needs HTTP/1.1 or later, not " + r.Proto
	}
	if r.Host == "" {
		return http.StatusBadRequest, "websocket handshake is missing the Host header"
	}
	if !hasToken(r.Header, "Upgrade", "websocket") {
		return http.StatusBadRequest, "websocket handshake needs \"Upgrade: websocket\""
	}
	if !hasToken(r.Header, "Connection", "upgrade") {
		return http.StatusBadRequest, "websocket handshake needs \"Connection: Upgrade\""
	}
	if v := r.Header.Values(hdrVersion); len(v) != 1 || strings.TrimSpace(v[0]) != Version {
		return http.StatusUpgradeRequired, "websocket handshake needs Sec-WebSocket-Version: 13"
	}
	keys := r.Header.Values(hdrKey)
	switch {
	case len(keys) == 0:
		return http.StatusBadRequest, "websocket handshake is missing Sec-WebSocket-Key"
	case len(keys) > 1:
		return http.StatusBadRequest, "websocket handshake has more than one Sec-WebSocket-Key"
	}
	if !validKey(strings.TrimSpace(keys[0])) {
		return http.StatusBadRequest, "Sec-WebSocket-Key is not the base64 encoding of 16 bytes"
	}
	return 0, ""
}

func validKey(key string) bool {
	// 16 bytes encode to exactly 24 characters with "==" padding.
	if len(key) != 24 {
		return false
	}
	var raw [18]byte
	n, err := base64.StdEncoding.Decode(raw[:], []byte(key))
	return err == nil && n == 16
}

// hasToken reports whether any of the comma-separated values of header
// name contains token, compared case-insensitively (RFC 7230 §6.1 and 6.7).
func hasToken(h http.Header, name, token string) bool {
	for _, v := range h.Values(name) {
		for part := range strings.SplitSeq(v, ",") {
			if strings.EqualFold(strings.TrimSpace(part), token) {
				return true
			}
		}
	}
	return false
}

// Subprotocols lists the subprotocols the client offered in
// Sec-WebSocket-Protocol, in its order of preference. It is safe from any
// goroutine.
func Subprotocols(r *http.Request) []string {
	var out []string
	for _, v := range r.Header.Values("Sec-WebSocket-Protocol") {
		for part := range strings.SplitSeq(v, ",") {
			if p := strings.TrimSpace(part); p != "" {
				out = append(out, p)
			}
		}
	}
	return out
}

// AppendHandshakeResponse appends the 101 response that completes the
// opening handshake for a client that sent key (its Sec-WebSocket-Key). A
// non-empty subprotocol is echoed in Sec-WebSocket-Protocol; it must be one
// the client offered (see Subprotocols). It is safe from any goroutine.
func AppendHandshakeResponse(dst []byte, key, subprotocol string) []byte {
	dst = append(dst, "HTTP/1.1 101 Switching Protocols\r\n"+
		"Upgrade: websocket\r\n"+
		"Connection: Upgrade\r\n"+
		"Sec-WebSocket-Accept: "...)
	dst = appendAccept(dst, strings.TrimSpace(key))
	dst = append(dst, "\r\n"...)
	if subprotocol != "" {
		dst = append(dst, "Sec-WebSocket-Protocol: "...)
		dst = append(dst, subprotocol...)
		dst = append(dst, "\r\n"...)
	}
	return append(dst, "\r\n"...)
}

// AppendHandshakeError appends a complete HTTP/1.1 response refusing the
// handshake with status and a plain-text body holding reason, and asks for
// the connection to be closed. For 426 it adds the headers RFC 6455 §4.4 and
// RFC 7231 §6.5.15 require (Sec-WebSocket-Version: 13, Upgrade: websocket).
// It is safe from any goroutine.
func AppendHandshakeError(dst []byte, status int, reason string) []byte {
	text := http.StatusText(status)
	if text == "" {
		text = "Error"
	}
	dst = append(dst, "HTTP/1.1 "...)
	dst = strconv.AppendInt(dst, int64(status), 10)
	dst = append(dst, ' ')
	dst = append(dst, text...)
	dst = append(dst, "\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: "...)
	dst = strconv.AppendInt(dst, int64(len(reason)+1), 10)
	dst = append(dst, "\r\nConnection: close\r\n"...)
	if status == http.StatusUpgradeRequired {
		dst = append(dst, "Sec-WebSocket-Version: "+Version+"\r\nUpgrade: websocket\r\n"...)
	}
	dst = append(dst, "\r\n"...)
	dst = append(dst, reason...)
	return append(dst, '\n')
}
