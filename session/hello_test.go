package session

import (
	"fmt"
	"reflect"
	"runtime"
	"strings"
	"testing"

	"github.com/agentbridge/agentbridge/auth"
	"github.com/agentbridge/agentbridge/codec/jsonrpc"
	"github.com/agentbridge/agentbridge/wire"
)

// helloCases are bridge/hello params members (appended after the method)
// that TestHelloAnswers sends: the common ones, read in place, and those
// that must take the decoder's way (a duplicate, an escape, a resume key,
// bad values) with their errors.
var helloCases = []string{
	``,
	`,"params":null`,
	`,"params":{}`,
	`,"params": { } `,
	`,"params":{"envelope":true}`,
	`,"params":{"envelope":false}`,
	`,"params":{"envelope":null,"onSlow":null,"resume":null}`,
	`,"params":{"onSlow":"degrade"}`,
	`,"params":{"onSlow":"disconnect","envelope":true}`,
	`,"params":{"onSlow":"catchup"}`,
	`,"params":{"onSlow":""}`,
	`,"params":{"other":[1,{"envelope":"x"}],"envelope":true,"more":"\u00e9"}`,
	`,"params":{"envelope":true,"envelope":false}`,
	`,"params":{"onSlow":"degrade","onSlow":"disconnect"}`,
	`,"params":{"onSlow":"deg\u0072ade"}`,
	`,"params":{"env\u0065lope":true}`,
	`,"params":{"Envelope":true}`,
	`,"params":{"envelope":"yes"}`,
	`,"params":{"envelope":1}`,
	`,"params":{"envelope":[true]}`,
	`,"params":{"onSlow":5}`,
	`,"params":{"onSlow":"explode"}`,
	`,"params":{"onSlow":"Degrade"}`,
	`,"params":{"onSlow":"\u00e9\t"}`,
	`,"params":{"onSlow":"dégrade"}`,
	`,"params":{"resume":5}`,
	`,"params":{"resume":"short"}`,
	`,"params":{"resume":"0123456789abcdef-key"}`,
	`,"params":{"resume":"0123456789abcdef-key","envelope":true,"onSlow":"degrade"}`,
	`,"params":{"resume":"0123456789abcdef-k\u0065y"}`,
	`,"params":{"resume":"0123456789abcdef-kéy"}`,
	`,"params":{"resume":""}`,
	`,"params":[1]`,
	`,"params":[]`,
}

// helloParamsOf returns the params of a bridge/hello with the members
// c (a helloCases entry), as bridgeCall finds them; nil when absent or
// when Peek refuses the message.
func helloParamsOf(t *testing.T, c string) ([]byte, bool) {
	t.Helper()
	msg := []byte(`{"jsonrpc":"2.0","id":1,"method":"bridge/hello"` + c + `}`)
	if _, err := jsonrpc.Peek(msg); err != nil {
		return nil, false
	}
	if start, end, _ := jsonrpc.Member(msg, "params"); start >= 0 {
		return msg[start:end], true
	}
	return nil, true
}

// TestReadHello: what readHello takes in place is what the decoder reads,
// and the params every client sends are taken in place.
func TestReadHello(t *testing.T) {
	inPlace := map[string]bool{
		``: true, `,"params":{}`: true, `,"params": { } `: true, `,"params":{"envelope":true}`: true,
		`,"params":{"envelope":false}`: true, `,"params":{"envelope":null,"onSlow":null,"resume":null}`: true,
		`,"params":{"onSlow":"degrade"}`: true, `,"params":{"onSlow":"disconnect","envelope":true}`: true,
		`,"params":{"onSlow":"catchup"}`: true, `,"params":{"onSlow":""}`: true,
		`,"params":{"other":[1,{"envelope":"x"}],"envelope":true,"more":"\u00e9"}`: true,
		`,"params":{"env\u0065lope":true}`:                                         true, `,"params":{"Envelope":true}`: true,
		`,"params":{"resume":"0123456789abcdef-key"}`: true, `,"params":{"resume":"short"}`: true, `,"params":{"resume":""}`: true,
		`,"params":{"resume":"0123456789abcdef-key","envelope":true,"onSlow":"degrade"}`: true,
	}
	for _, c := range helloCases {
		params, valid := helloParamsOf(t, c)
		if !valid {
			continue
		}
		got, ok := readHello(params)
		if ok != inPlace[c] {
			t.Errorf("readHello(%s): in place %v, want %v", params, ok, inPlace[c])
		}
		if !ok {
			continue
		}
		var want helloParams
		if len(params) > 0 {
			if err := jsonrpc.Unmarshal(params, &want); err != nil {
				t.Errorf("readHello took %s, which the decoder refuses: %v", params, err)
				continue
			}
		}
		if !reflect.DeepEqual(got, want) {
			t.Errorf("readHello(%s) = %s, the decoder reads %s", params, describeHello(got), describeHello(want))
		}
	}
}

func describeHello(p helloParams) string {
	s := fmt.Sprintf("onSlow %q", p.OnSlow)
	if p.Envelope != nil {
		s += fmt.Sprintf(" envelope %v", *p.Envelope)
	}
	if p.Resume != nil {
		s += fmt.Sprintf(" resume %q", *p.Resume)
	}
	return s
}

// TestHelloAnswers: every hello's answer is byte for byte what sonic
// writes for a helloResult (as before the answer was written by hand),
// whatever the version, role and id; a hello the in-place reader leaves
// to the decoder is answered as it decodes, and bad params get their
// error.
func TestHelloAnswers(t *testing.T) {
	// Three of the answers, pinned as the bridge wrote them before.
	pinned := map[string]string{
		`1 v1.2.3-4-gabc client ,"params":{}`:                                      `{"jsonrpc":"2.0","id":1,"result":{"version":"v1.2.3-4-gabc","connectionId":3,"role":"client","envelope":false,"onSlow":"catchup"}}`,
		`1 v1.2.3-4-gabc client ,"params":{"onSlow":"disconnect","envelope":true}`: `{"jsonrpc":"2.0","id":1,"result":{"version":"v1.2.3-4-gabc","connectionId":9,"role":"client","envelope":true,"onSlow":"disconnect"}}`,
		`1 v1.2.3-4-gabc client ,"params":{"envelope":"yes"}`:                      `{"jsonrpc":"2.0","id":1,"error":{"code":-32602,"message":"bridge/hello: envelope must be true or false, not \"yes\""}}`,
	}
	seen := 0
	for _, version := range []string{"", "v1.2.3-4-gabc", "dév <&> \"q\"\n\x01\xff"} {
		r := newRig(t, Config{Version: version})
		for _, role := range []auth.Role{auth.RoleClient, auth.RoleViewer, auth.RoleOperator} {
			for _, id := range []string{`1`, `"h"`, `12345678901234`, `"a\"b\u00e9"`} {
				for _, c := range helloCases {
					cl, fc := r.open(role)
					r.hub.Handle(cl, []byte(`{"jsonrpc":"2.0","id":`+id+`,"method":"bridge/hello"`+c+`}`))
					if len(fc.got) != 1 {
						t.Fatalf("hello %s: %d answers", c, len(fc.got))
					}
					got := string(fc.got[0].Line())
					if !strings.HasSuffix(got, "\n") || strings.Count(got, "\n") != 1 {
						t.Fatalf("hello %s: answer %q is not one line", c, got)
					}
					got = got[:len(got)-1]
					if want, ok := pinned[id+" "+version+" "+role.String()+" "+c]; ok {
						seen++
						if got != want {
							t.Errorf("hello %s:\n got %s\nwant %s", c, got, want)
						}
					}
					if want, ok := helloOracle(t, cl, version, id, c); ok && got != want {
						t.Errorf("version %q role %s id %s hello %s:\n got %s\nwant %s", version, role, id, c, got, want)
					} else if !ok && !strings.Contains(got, `"error":{"code":-320`) && !strings.Contains(got, `"error":{"code":-3260`) && !strings.Contains(got, `"resume":{"key":`) {
						t.Errorf("hello %s: neither an error nor a resumed answer: %s", c, got)
					}
					r.hub.Closed(cl)
				}
			}
		}
	}
	if seen != len(pinned) {
		t.Fatalf("%d pinned answers checked, want %d", seen, len(pinned))
	}
}

// helloOracle is the answer to a hello with the members c without a
// resume, as the bridge wrote it before: the params decoded by sonic,
// the result encoded by sonic. false when c resumes, or when its params
// are refused.
func helloOracle(t *testing.T, cl *Client, version, id, c string) (string, bool) {
	params, valid := helloParamsOf(t, c)
	var p helloParams
	if !valid || len(params) > 0 && (params[0] != '{' || jsonrpc.Unmarshal(params, &p) != nil) || p.Resume != nil {
		return "", false
	}
	res := helloResult{Version: version, ConnectionID: cl.ID, Role: cl.info.Role.String(), OnSlow: DefaultOnSlow(cl.info.Role)}
	if p.Envelope != nil {
		res.Envelope = *p.Envelope
	}
	switch p.OnSlow {
	case "":
	case "catchup", "degrade", "disconnect":
		res.OnSlow = p.OnSlow
	default:
		return "", false
	}
	return string(jsonrpc.AppendResponse(nil, []byte(id), &res)), true
}

// recyclingConn is a connection's writer as far as the hub can tell: it
// takes each message's bytes (into a reused buffer) and recycles the
// message, as delivery.Endpoint does after a write.
type recyclingConn struct{ last []byte }

func (c *recyclingConn) Send(m *wire.Msg, _ wire.Class) bool {
	c.last = append(c.last[:0], m.Line()...)
	wire.Recycle(m)
	return true
}

func (c *recyclingConn) Close(CloseCode, string) {}

// TestAllocsHello: a bridge/hello, which every connection sends once, is
// read and answered with no allocation of its own (the answer's wire.Msg
// comes from a pool its connection's writer returns it to), so it leaves
// no garbage in a burst of new connections' RSS.
func TestAllocsHello(t *testing.T) {
	if raceEnabled {
		t.Skip("the race detector's instrumentation allocates; the Makefile runs TestAllocs without -race")
	}
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(1))
	h := New(Config{Version: "v1.2.3"})
	h.SetAgent(&sinkAgent{})
	h.AgentStarted(1)
	for _, c := range []struct {
		role      auth.Role
		msg, want string
	}{
		{auth.RoleClient, `{"jsonrpc":"2.0","id":1,"method":"bridge/hello","params":{}}`,
			`{"jsonrpc":"2.0","id":1,"result":{"version":"v1.2.3","connectionId":1,"role":"client","envelope":false,"onSlow":"catchup"}}`},
		{auth.RoleViewer, `{"jsonrpc":"2.0","id":"hello","method":"bridge/hello","params":{"envelope":true,"onSlow":"disconnect"}}`,
			`{"jsonrpc":"2.0","id":"hello","result":{"version":"v1.2.3","connectionId":2,"role":"viewer","envelope":true,"onSlow":"disconnect"}}`},
	} {
		rc := &recyclingConn{}
		cl := h.Open(rc, ConnInfo{Role: c.role, Transport: "test"})
		msg := []byte(c.msg)
		if n := testing.AllocsPerRun(1000, func() { h.Handle(cl, msg) }); n != 0 {
			t.Errorf("%s: %v allocations per hello, want 0", msg, n)
		}
		if got := string(rc.last); got != c.want+"\n" {
			t.Errorf("%s answered %q, want %q", msg, got, c.want)
		}
	}
}
