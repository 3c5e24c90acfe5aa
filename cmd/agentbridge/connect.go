package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"strconv"
	"syscall"
	"time"

	"github.com/agentbridge/agentbridge/connect"
	"github.com/agentbridge/agentbridge/internal/config"
)

func runConnect(args []string) int {
	fs := flag.NewFlagSet("connect", flag.ContinueOnError)
	token := fs.String("token", "", "token for ws:// and wss:// (or AGENTBRIDGE_TOKEN)")
	ca := fs.String("ca", "", "PEM file of a CA to trust for wss:// (self-signed certificates)")
	maxMsg := fs.Int("max-message", 16<<20, "largest message, bytes")
	retryFor := fs.Duration("retry-for", 2*time.Minute, "how long reconnecting may fail before giving up (exit 1)")
	logLevel := fs.String("log-level", "warn", "debug, info, warn or error (logs go to stderr)")
	var allowUID config.List
	fs.Var(&allowUID, "allow-uid", "unix://: uid besides your own whose daemon may serve the socket (repeatable); any other is refused before anything is sent")
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "Usage: agentbridge connect [flags] URL\n\nURL is unix:///path/to.sock, ws://host:port/acp or wss://host:port/acp.\nstdin and stdout carry newline-delimited JSON-RPC, so an editor can run this as its agent command.\n\nFlags:\n")
		fs.PrintDefaults()
	}
	if code, ok := parseFlags(fs, args); !ok {
		return code
	}
	if fs.NArg() != 1 {
		fmt.Fprintln(os.Stderr, "agentbridge connect: exactly one URL is required (unix:///path.sock, ws://host:port/acp or wss://host:port/acp)")
		return 2
	}
	var uids []uint32
	for _, s := range allowUID {
		u, err := strconv.ParseUint(s, 10, 32)
		if err != nil {
			fmt.Fprintf(os.Stderr, "agentbridge connect: invalid --allow-uid %q (want a numeric uid)\n", s)
			return 2
		}
		uids = append(uids, uint32(u))
	}
	log, err := newLogger(os.Stderr, *logLevel, "text")
	if err != nil {
		fmt.Fprintf(os.Stderr, "agentbridge connect: %v\n", err)
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	err = connect.Run(ctx, connect.Options{URL: fs.Arg(0), Token: *token, CA: *ca, MaxMessage: *maxMsg, RetryFor: *retryFor,
		AllowUIDs: uids, Stdin: os.Stdin, Stdout: os.Stdout, Logger: log.With(slog.String("src", "connect"))})
	if err != nil {
		fmt.Fprintf(os.Stderr, "agentbridge connect: %v\n", err)
		return 1
	}
	return 0
}
