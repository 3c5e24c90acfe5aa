package loop

import (
	"bytes"
	"fmt"
	"net/http"
	"strconv"
	"strings"

	"github.com/agentbridge/agentbridge/httpfront"
)

// Request bodies on the gnet path. The loop reads a body only where a
// route takes one (POST /acp, POST /mcp): it waits until the whole body is
// in gnet's inbound buffer, framed by Content-Length or chunked
// (RFC 9112 §7.1), and refuses one over httpfront.MaxBody with 413.

// messageBody reports whether req carries a JSON-RPC message the loop
// must read.
func messageBody(r *http.Request) bool {
	return r.Method == http.MethodPost && (r.URL.Path == "/acp" || r.URL.Path == "/mcp")
}

// readBody returns the body that starts b and how many bytes of b it took
// (framing included); n < 0 means b does not hold all of it yet. A
// refusal is an HTTP error to answer before closing.
func readBody(r *http.Request, b []byte) (body []byte, n int, rp *httpfront.Reply) {
	if len(r.TransferEncoding) > 0 {
		if len(r.TransferEncoding) != 1 || r.TransferEncoding[0] != "chunked" {
			return nil, 0, httpfront.Text(http.StatusNotImplemented, fmt.Sprintf("transfer coding %q is not supported (only chunked)", strings.Join(r.TransferEncoding, ", ")))
		}
		return dechunk(b, httpfront.MaxBody)
	}
	if r.ContentLength > httpfront.MaxBody {
		return nil, 0, httpfront.Text(http.StatusRequestEntityTooLarge, fmt.Sprintf("Request body exceeds %d bytes", httpfront.MaxBody))
	}
	if r.ContentLength < 0 {
		return nil, 0, httpfront.Text(http.StatusLengthRequired, "a POST needs Content-Length or Transfer-Encoding: chunked")
	}
	cl := int(r.ContentLength)
	if len(b) < cl {
		return nil, -1, nil
	}
	return b[:cl], cl, nil
}

// dechunk decodes a chunked body at the start of b, trailers skipped. It
// copies only when the body has more than one chunk.
func dechunk(b []byte, limit int) (body []byte, n int, rp *httpfront.Reply) {
	pos := 0
	var out []byte
	chunks := 0
	for {
		i := bytes.Index(b[pos:], crlf)
		if i < 0 {
			if len(b)-pos > 1024 {
				return nil, 0, httpfront.Text(http.StatusBadRequest, "malformed chunked body: chunk size line too long")
			}
			return nil, -1, nil
		}
		if i > 1024 {
			return nil, 0, httpfront.Text(http.StatusBadRequest, "malformed chunked body: chunk size line too long")
		}
		line := b[pos : pos+i]
		if j := bytes.IndexByte(line, ';'); j >= 0 {
			line = line[:j] // chunk extensions
		}
		size, err := strconv.ParseUint(string(bytes.TrimRight(line, " \t")), 16, 62)
		if err != nil {
			return nil, 0, httpfront.Text(http.StatusBadRequest, fmt.Sprintf("malformed chunked body: chunk size %q", line))
		}
		pos += i + 2
		if size == 0 {
			// Trailer section, ended by an empty line.
			for {
				k := bytes.Index(b[pos:], crlf)
				if k < 0 {
					if len(b)-pos > 16<<10 {
						return nil, 0, httpfront.Text(http.StatusBadRequest, "malformed chunked body: trailers too long")
					}
					return nil, -1, nil
				}
				if k > 16<<10 {
					return nil, 0, httpfront.Text(http.StatusBadRequest, "malformed chunked body: trailers too long")
				}
				pos += k + 2
				if k == 0 {
					if out == nil {
						out = []byte{}
					}
					return out, pos, nil
				}
			}
		}
		if size > uint64(limit) || len(out)+int(size) > limit {
			return nil, 0, httpfront.Text(http.StatusRequestEntityTooLarge, fmt.Sprintf("Request body exceeds %d bytes", limit))
		}
		if len(b)-pos < int(size)+2 {
			return nil, -1, nil
		}
		data := b[pos : pos+int(size)]
		if !bytes.Equal(b[pos+int(size):pos+int(size)+2], crlf) {
			return nil, 0, httpfront.Text(http.StatusBadRequest, "malformed chunked body: chunk data not followed by CRLF")
		}
		chunks++
		if chunks == 1 {
			out = data
		} else {
			if chunks == 2 {
				out = append([]byte(nil), out...)
			}
			out = append(out, data...)
		}
		pos += int(size) + 2
	}
}
