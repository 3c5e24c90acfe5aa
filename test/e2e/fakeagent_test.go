package e2e

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"sync"
	"time"
)

// fakeAgent is a scriptable NDJSON agent: the test binary re-executed with
// AB_FAKE_AGENT=1. It makes agent behaviour (crashes, counters, bursts)
// deterministic where the demo agent would not.
//
//	initialize       -> {protocolVersion:1, initializeCount:N, pid}
//	echo             -> result = params
//	slow {ms}        -> answers after ms
//	crash            -> exits with status 3 without answering
//	burst {sessionId, n, size} -> n session/update notifications, then {sent:n}
//	session/new      -> {sessionId:"s<k>"}
//	ask {sessionId}  -> sends session/request_permission to the client, answers with the client's answer
//	stall {ms}       -> stops reading stdin for ms, then answers
//	spray {n, prefix} -> one session/update for each of n sessions prefix%06d, then {sent:n}
//	stream {sessionId, n, size, every, pauseUs} -> n session/update notifications
//	                    (streamEvent bytes), flushed every `every` with a pause
//	                    of pauseUs between flushes, then {sent:n}; the agent
//	                    keeps reading meanwhile
func fakeAgent() {
	in := bufio.NewReaderSize(os.Stdin, 1<<20)
	out := bufio.NewWriterSize(os.Stdout, 1<<16)
	inits, sessions, nextID := 0, 0, 100
	waiting := map[string]json.RawMessage{} // our request id -> client request id awaiting it
	var mu sync.Mutex
	write := func(v any) {
		b, _ := json.Marshal(v)
		mu.Lock()
		out.Write(b)
		out.WriteByte('\n')
		out.Flush()
		mu.Unlock()
	}
	for {
		line, err := in.ReadBytes('\n')
		if err != nil {
			return
		}
		var m struct {
			ID     json.RawMessage `json:"id"`
			Method string          `json:"method"`
			Params json.RawMessage `json:"params"`
			Result json.RawMessage `json:"result"`
			Error  json.RawMessage `json:"error"`
		}
		if json.Unmarshal(line, &m) != nil {
			write(map[string]any{"jsonrpc": "2.0", "id": nil, "error": map[string]any{"code": -32700, "message": "parse error"}})
			continue
		}
		if m.Method == "" { // a response to our request
			if orig, ok := waiting[string(m.ID)]; ok {
				delete(waiting, string(m.ID))
				write(map[string]any{"jsonrpc": "2.0", "id": orig, "result": map[string]any{"answer": m.Result, "error": m.Error}})
			}
			continue
		}
		if m.ID == nil {
			continue // notification
		}
		reply := func(res any) { write(map[string]any{"jsonrpc": "2.0", "id": m.ID, "result": res}) }
		var p map[string]any
		_ = json.Unmarshal(m.Params, &p)
		switch m.Method {
		case "initialize":
			inits++
			reply(map[string]any{"protocolVersion": 1, "initializeCount": inits, "pid": os.Getpid()})
		case "echo":
			reply(p)
		case "slow":
			ms, _ := p["ms"].(float64)
			go func() { // answers later; the agent keeps reading meanwhile
				time.Sleep(time.Duration(ms) * time.Millisecond)
				reply(p)
			}()
		case "huge": // an answer of about size bytes
			size, _ := p["size"].(float64)
			reply(map[string]any{"pad": strings.Repeat("x", int(size))})
		case "garbage": // n lines that are not JSON-RPC, then the answer
			n, _ := p["n"].(float64)
			mu.Lock()
			for i := 0; i < int(n); i++ {
				fmt.Fprintf(out, "garbage line %d\n", i)
			}
			mu.Unlock()
			reply(map[string]any{"sent": int(n)})
		case "crash":
			os.Exit(3)
		case "stall":
			// Stops reading stdin for ms: what the client sends meanwhile
			// waits in the bridge's queue for the agent.
			ms, _ := p["ms"].(float64)
			time.Sleep(time.Duration(ms) * time.Millisecond)
			reply(p)
		case "spray":
			// One session/update for each of n sessions nobody created.
			n, _ := p["n"].(float64)
			prefix, _ := p["prefix"].(string)
			mu.Lock()
			for i := 0; i < int(n); i++ {
				b, _ := json.Marshal(map[string]any{"jsonrpc": "2.0", "method": "session/update", "params": map[string]any{"sessionId": fmt.Sprintf("%s%06d", prefix, i), "update": map[string]any{"sessionUpdate": "agent_message_chunk"}}})
				out.Write(b)
				out.WriteByte('\n')
			}
			mu.Unlock()
			reply(map[string]any{"sent": int(n)})
		case "session/new":
			sessions++
			reply(map[string]any{"sessionId": fmt.Sprintf("s%d", sessions)})
		case "burst":
			sid, _ := p["sessionId"].(string)
			n, _ := p["n"].(float64)
			size, _ := p["size"].(float64)
			pad := make([]byte, int(size))
			for i := range pad {
				pad[i] = 'x'
			}
			mu.Lock()
			for i := 0; i < int(n); i++ {
				b, _ := json.Marshal(map[string]any{"jsonrpc": "2.0", "method": "session/update", "params": map[string]any{"sessionId": sid, "n": i, "pad": string(pad)}})
				out.Write(b)
				out.WriteByte('\n')
			}
			mu.Unlock()
			reply(map[string]any{"sent": int(n)})
		case "stream":
			sid, _ := p["sessionId"].(string)
			n, _ := p["n"].(float64)
			size, _ := p["size"].(float64)
			every, _ := p["every"].(float64)
			pause, _ := p["pauseUs"].(float64)
			if every < 1 {
				every = 1
			}
			go func() {
				for i := 0; i < int(n); {
					mu.Lock()
					for k := 0; k < int(every) && i < int(n); k++ {
						out.Write(streamEvent(sid, i, int(size)))
						out.WriteByte('\n')
						i++
					}
					out.Flush()
					mu.Unlock()
					if pause > 0 {
						time.Sleep(time.Duration(pause) * time.Microsecond)
					}
				}
				reply(map[string]any{"sent": int(n)})
			}()
		case "ask":
			nextID++
			id := fmt.Sprint(nextID)
			waiting[id] = m.ID
			write(map[string]any{"jsonrpc": "2.0", "id": nextID, "method": "session/request_permission", "params": map[string]any{"sessionId": p["sessionId"], "toolCall": map[string]any{"toolCallId": "t1"}, "options": []any{map[string]any{"optionId": "allow", "name": "Allow", "kind": "allow_once"}}}})
		default:
			write(map[string]any{"jsonrpc": "2.0", "id": m.ID, "error": map[string]any{"code": -32601, "message": "unknown method " + m.Method}})
		}
	}
}

// streamEvent is the i-th event of a stream, exactly as the fake agent
// writes it: tests compare what clients reassemble with it byte for byte.
// The text mixes escapes and multi-byte UTF-8 so that any re-encoding on
// the way shows.
func streamEvent(sid string, i, size int) []byte {
	const alphabet = "abcdefghijklmnopqrstuvwxyz0123456789 /<>&"
	pad := make([]byte, size)
	for k := range pad {
		pad[k] = alphabet[(i*7+k*13)%len(alphabet)]
	}
	return []byte(fmt.Sprintf(`{"jsonrpc":"2.0","method":"session/update","params":{"sessionId":%q,"update":{"sessionUpdate":"agent_message_chunk","content":{"type":"text","text":"%d é中 \"q\" \\u2028 \u00e9 %s"}}}}`, sid, i, pad))
}

func init() {
	if os.Getenv("AB_FAKE_AGENT") == "1" {
		fakeAgent()
		os.Exit(0)
	}
}

// fakeAgentCmd is the agent command line for serve.
func fakeAgentCmd() []string {
	exe, err := os.Executable()
	if err != nil {
		panic(err)
	}
	return []string{"--", "env", "AB_FAKE_AGENT=1", exe}
}
