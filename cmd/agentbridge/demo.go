package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/agentbridge/agentbridge/demoagent"
)

func runDemoAgent(args []string) int {
	fs := flag.NewFlagSet("demo-agent", flag.ContinueOnError)
	var o demoagent.Options
	o.RegisterFlags(fs)
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "Usage: agentbridge demo-agent [flags]\n\nA built-in ACP agent over stdio (newline-delimited JSON-RPC).\nA prompt streams agent_message_chunk updates and tool calls, asking session/request_permission first.\n\nFlags:\n")
		fs.PrintDefaults()
	}
	if code, ok := parseFlags(fs, args); !ok {
		return code
	}
	if o.Protocol != 1 && o.Protocol != 2 {
		fmt.Fprintf(os.Stderr, "agentbridge demo-agent: --protocol %d: the demo agent speaks ACP protocol version 1 or 2\n", o.Protocol)
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
