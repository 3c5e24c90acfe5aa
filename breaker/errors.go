package breaker

import "errors"

// ErrBadConfig wraps every error from Config.Validate.
var ErrBadConfig = errors.New("breaker: bad config")
