package auth

import "errors"

var (
	// ErrUnknownRole is wrapped by ParseRole for a name that is not a role.
	ErrUnknownRole = errors.New("auth: unknown role")
	// ErrTokensFile is wrapped by every LoadTokens error about the file's
	// content; the message names the file, the line and the problem, never
	// the token text.
	ErrTokensFile = errors.New("auth: bad tokens file")
	// ErrBadToken is wrapped when a token given to NewTokens or
	// WriteTokenFile is unusable (too short, bad characters, duplicate).
	ErrBadToken = errors.New("auth: bad token")
	// ErrBadOrigin is wrapped by NewOriginPolicy for an entry that is not
	// "*" or scheme://host[:port].
	ErrBadOrigin = errors.New("auth: bad origin")
)
