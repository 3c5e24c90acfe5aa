package auth

import (
	"fmt"
	"strings"
)

// Role is what a token (or a Unix-socket peer) may do. The zero Role is
// not a role: every policy denies it, so a forgotten assignment fails
// closed.
type Role uint8

const (
	// RoleViewer may call the bridge/* read methods and receives the data
	// plane of the sessions it attaches to.
	RoleViewer Role = iota + 1
	// RoleOperator is a viewer that may also answer
	// session/request_permission and send session/cancel.
	RoleOperator
	// RoleClient is a full JSON-RPC peer of the agent.
	RoleClient
)

// String returns "viewer", "operator" or "client".
func (r Role) String() string {
	switch r {
	case RoleViewer:
		return "viewer"
	case RoleOperator:
		return "operator"
	case RoleClient:
		return "client"
	default:
		return fmt.Sprintf("Role(%d)", uint8(r))
	}
}

// Valid reports whether r is one of the three roles.
func (r Role) Valid() bool { return r >= RoleViewer && r <= RoleClient }

// ParseRole parses "viewer", "operator" or "client", ignoring case.
func ParseRole(s string) (Role, error) {
	switch strings.ToLower(s) {
	case "viewer":
		return RoleViewer, nil
	case "operator":
		return RoleOperator, nil
	case "client":
		return RoleClient, nil
	}
	return 0, fmt.Errorf("%w %q (want viewer, operator or client)", ErrUnknownRole, s)
}

// MarshalText implements encoding.TextMarshaler, for config files.
func (r Role) MarshalText() ([]byte, error) {
	if !r.Valid() {
		return nil, fmt.Errorf("%w %d", ErrUnknownRole, uint8(r))
	}
	return []byte(r.String()), nil
}

// UnmarshalText implements encoding.TextUnmarshaler with ParseRole.
func (r *Role) UnmarshalText(b []byte) error {
	v, err := ParseRole(string(b))
	if err != nil {
		return err
	}
	*r = v
	return nil
}

// Methods the policy names. They are part of the external contract.
const (
	methodRequestPermission = "session/request_permission"
	methodCancel            = "session/cancel"
)

// viewerMethod reports whether method is a bridge/* read method. It is an
// allow list, not a "bridge/" prefix test, so a bridge method added later
// is denied to viewers until someone decides otherwise.
func viewerMethod(method string) bool {
	switch method {
	case "bridge/hello", "bridge/sessions", "bridge/attach", "bridge/detach", "bridge/snapshot":
		return true
	}
	return false
}

// AllowRequest reports whether a connection in role r may send a request
// or notification of method. A false answer means error -32001, and the
// message is never forwarded. Safe from any goroutine.
func AllowRequest(r Role, method string) bool {
	switch r {
	case RoleClient:
		return true
	case RoleOperator:
		return viewerMethod(method) || method == methodCancel
	case RoleViewer:
		return viewerMethod(method)
	}
	return false
}

// AllowAnswer reports whether a connection in role r may send a response
// (result or error) to an agent request of agentMethod. Safe from any
// goroutine.
func AllowAnswer(r Role, agentMethod string) bool {
	switch r {
	case RoleClient:
		return true
	case RoleOperator:
		return agentMethod == methodRequestPermission
	}
	return false
}
