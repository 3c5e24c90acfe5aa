package session

import (
	"encoding/json"
	"fmt"
	"reflect"
	"strings"

	"github.com/agentbridge/agentbridge/codec/jsonrpc"
)

// paramsError explains why params (a JSON object) did not decode into v (a
// pointer to a struct of optional fields): it names the first field whose
// value has the wrong type, the value (shortened) and what was expected,
// rather than the decoder's message, which spans lines and quotes the
// input around the error. Called only on the error path.
func paramsError(params []byte, v any) string {
	var fields map[string]json.RawMessage
	if err := jsonrpc.Unmarshal(params, &fields); err != nil {
		return "params must be a JSON object"
	}
	t := reflect.TypeOf(v).Elem()
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
		raw, ok := fields[name]
		if name == "" || !ok {
			continue
		}
		if err := jsonrpc.Unmarshal(raw, reflect.New(f.Type).Interface()); err != nil {
			return fmt.Sprintf("%s must be %s, not %s", name, expected(f.Type), shorten(raw))
		}
	}
	return "params do not match the method's parameters"
}

// expected describes what a field of type t accepts, in the words of the
// protocol documentation.
func expected(t reflect.Type) string {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	switch t.Kind() {
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		return "a non-negative integer"
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		return "an integer"
	case reflect.String:
		return "a string"
	case reflect.Bool:
		return "true or false"
	case reflect.Slice:
		return "an array"
	}
	return "an object"
}

// shorten quotes a JSON value for an error message, cut at 40 bytes.
func shorten(raw json.RawMessage) string {
	s := strings.TrimSpace(string(raw))
	if len(s) > 40 {
		s = s[:40] + "…"
	}
	return s
}
