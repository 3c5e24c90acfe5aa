// Command agentbridge serves one long-running JSON-RPC agent (ACP, MCP or
// LSP over stdio) to many clients over a Unix socket and WebSocket.
//
// main is thin: parse flags, build the pieces, run, wait.
package main

import (
	"flag"
	"fmt"
	"os"
	"runtime"
	"runtime/debug"

	"github.com/agentbridge/agentbridge/internal/config"
)

// Set with -ldflags "-X main.version=... -X main.commit=...".
var (
	version = "dev"
	commit  = ""
)

const usage = `agentbridge shares one long-running AI agent (ACP, MCP or LSP over stdio)
among many clients over a Unix socket and WebSocket.

Usage:
  agentbridge serve [flags] [-- AGENT_CMD ARGS...]   run the daemon (default agent: the built-in demo agent)
  agentbridge connect [flags] URL                    stdio shim: unix:///path.sock, ws://host:port/acp, wss://...
  agentbridge demo-agent [flags]                     the built-in ACP demo agent over stdio
  agentbridge bench [flags] [SCENARIO...]            the load generator and benchmark suite
  agentbridge version                                version, commit, Go version

Run 'agentbridge COMMAND -h' for the flags of a command.
`

func main() {
	if len(os.Args) < 2 {
		fmt.Fprint(os.Stderr, usage)
		os.Exit(2)
	}
	cmd, args := os.Args[1], os.Args[2:]
	var code int
	switch cmd {
	case "serve":
		code = runServe(args)
	case "connect":
		code = runConnect(args)
	case "demo-agent":
		code = runDemoAgent(args)
	case "bench":
		code = runBench(args)
	case "version", "--version", "-version":
		fmt.Printf("agentbridge %s\ncommit %s\n%s %s/%s\n", version, revision(), runtime.Version(), runtime.GOOS, runtime.GOARCH)
	case "help", "-h", "--help":
		fmt.Print(usage)
	default:
		fmt.Fprintf(os.Stderr, "agentbridge: unknown command %q\n\n%s", cmd, usage)
		code = 2
	}
	os.Exit(code)
}

// parseFlags parses a subcommand's flags and fills the unset ones from the
// AGENTBRIDGE_* environment. ok is false when the command must stop with
// code: 0 after -h, 2 after a bad flag or value (already reported).
func parseFlags(fs *flag.FlagSet, args []string) (code int, ok bool) {
	if err := fs.Parse(args); err != nil {
		if config.IsHelp(err) {
			return 0, false
		}
		return 2, false
	}
	if err := config.Apply(fs, ""); err != nil {
		fmt.Fprintf(os.Stderr, "agentbridge %s: %v\n", fs.Name(), err)
		return 2, false
	}
	return 0, true
}

func revision() string {
	if commit != "" {
		return commit
	}
	if bi, ok := debug.ReadBuildInfo(); ok {
		for _, s := range bi.Settings {
			if s.Key == "vcs.revision" {
				return s.Value
			}
		}
	}
	return "unknown"
}
