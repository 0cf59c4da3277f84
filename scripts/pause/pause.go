// pause is the first process of every pod sandbox on the local cluster's
// nodes: it holds the pod's namespaces open, reaps orphaned children (it is
// pid 1 of the pod's pid namespace when the pod shares one), and exits
// cleanly on SIGINT or SIGTERM. Built by scripts/build-kube.sh; the local
// cluster packs it into the image that containerd's CRI uses as sandbox.
package main

import (
	"fmt"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	if len(os.Args) > 1 && os.Args[1] == "-v" {
		fmt.Println("volt pause 1")
		return
	}
	signals := make(chan os.Signal, 8)
	signal.Notify(signals, syscall.SIGINT, syscall.SIGTERM, syscall.SIGCHLD)
	for sig := range signals {
		if sig != syscall.SIGCHLD {
			os.Exit(0)
		}
		// One SIGCHLD may stand for several exits: reap all that are ready.
		for {
			pid, err := syscall.Wait4(-1, nil, syscall.WNOHANG, nil)
			if pid <= 0 || err != nil {
				break
			}
		}
	}
}
