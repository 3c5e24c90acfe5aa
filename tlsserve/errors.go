package tlsserve

import "errors"

// ErrIncomplete is returned by New when the configuration lacks the hub or
// the front.
var ErrIncomplete = errors.New("tlsserve: config needs a Hub and a Front")
