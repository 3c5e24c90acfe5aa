package delivery

import "errors"

var (
	// ErrBadConfig wraps every error from Config.Validate.
	ErrBadConfig = errors.New("delivery: bad config")
	// ErrBadPolicy is returned by ParsePolicy for anything but "catchup",
	// "degrade" or "disconnect".
	ErrBadPolicy = errors.New("delivery: bad onSlow policy")
	// ErrBadRate is returned by ParseRate for a malformed --rate value.
	ErrBadRate = errors.New("delivery: bad rate")
)
