package tap_test

import (
	"fmt"
	"os/exec"
	"strings"

	"github.com/vmnet/vmnet/netns"
	"github.com/vmnet/vmnet/owner"
	"github.com/vmnet/vmnet/tap"
)

// Create a two-queue tap with a 12-byte vnet header and TSO in a named
// namespace, and hand its queues to QEMU as inherited fds.
func Example() {
	var t *tap.Tap
	err := netns.DoNamed("lab1", func() error {
		cfg := tap.NewConfig("vm0", 2)
		cfg.VnetHdrSize = 12
		cfg.Offloads, _ = tap.ParseOffloads("csum,tso4,tso6")
		cfg.BestEffort = true
		cfg.Up = true
		cfg.Tag = owner.Lab("lab1")
		var err error
		t, err = tap.Create(cfg)
		return err
	})
	if err != nil {
		fmt.Println(err)
		return
	}
	defer t.Close()

	cmd := exec.Command("qemu-system-x86_64" /* ... */)
	cmd.ExtraFiles = t.Files() // fds 3, 4, ... in the child
	fds := make([]string, len(cmd.ExtraFiles))
	for i := range fds {
		fds[i] = fmt.Sprint(3 + i)
	}
	cmd.Args = append(cmd.Args, "-netdev", "tap,id=n0,vhost=off,fds="+strings.Join(fds, ":"))
	_ = cmd.Start()
}
