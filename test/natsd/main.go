// Command natsd runs a NATS server with JetStream on loopback for trying a
// fleet and for `agentbridge bench fleet` (scripts/bench.sh): it prints
// the client URL on stdout, one line, once the server is ready, and runs
// until SIGINT or SIGTERM. The server is nats-server's own package, the
// version go.mod pins; it is not linked into agentbridge, which only
// speaks to NATS as a client.
package main

import (
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"

	natsserver "github.com/nats-io/nats-server/v2/server"
)

func main() {
	port := flag.Int("port", -1, "port on 127.0.0.1 (-1: a free one)")
	store := flag.String("store", "", "JetStream store directory (default: a new temporary one, removed at exit)")
	flag.Parse()
	dir := *store
	if dir == "" {
		d, err := os.MkdirTemp("", "natsd")
		if err != nil {
			fmt.Fprintln(os.Stderr, "natsd:", err)
			os.Exit(1)
		}
		defer os.RemoveAll(d)
		dir = d
	}
	ns, err := natsserver.NewServer(&natsserver.Options{
		Host: "127.0.0.1", Port: *port, JetStream: true, StoreDir: dir,
		NoLog: true, NoSigs: true, JetStreamMaxMemory: 64 << 20, JetStreamMaxStore: 4 << 30,
	})
	if err != nil {
		fmt.Fprintln(os.Stderr, "natsd:", err)
		os.Exit(1)
	}
	go ns.Start()
	if !ns.ReadyForConnections(10 * time.Second) {
		fmt.Fprintln(os.Stderr, "natsd: not ready within 10s")
		os.Exit(1)
	}
	fmt.Println(ns.ClientURL())
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
	<-sig
	ns.Shutdown()
	ns.WaitForShutdown()
}
