package bench

import "errors"

var (
	// errHelp reports that --help was asked for; the usage is printed.
	errHelp = errors.New("bench: help requested")
	// errNothingToPlot: --plot was given but no figure of a charted
	// scenario was measured.
	errNothingToPlot = errors.New("bench: no figures to plot")
)
