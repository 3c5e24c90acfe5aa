package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/agentbridge/agentbridge/demoagent"
	"github.com/agentbridge/agentbridge/internal/config"
)

func runDemoAgent(args []string) int {
	fs := flag.NewFlagSet("demo-agent", flag.ContinueOnError)
	var o demoagent.Options
	o.RegisterFlags(fs)
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "Usage: agentbridge demo-agent [flags]\n\nA built-in ACP agent over stdio (newline-delimited JSON-RPC).\nA prompt streams agent_message_chunk updates and tool calls, asking session/request_permission first.\n\nFlags:\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if config.IsHelp(err) {
			return 0
		}
		return 2
	}
	if err := config.Apply(fs, ""); err != nil {
		fmt.Fprintf(os.Stderr, "agentbridge demo-agent: %v\n", err)
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := demoagent.Run(ctx, os.Stdin, os.Stdout, o); err != nil {
		fmt.Fprintf(os.Stderr, "agentbridge demo-agent: %v\n", err)
		return 1
	}
	return 0
}
