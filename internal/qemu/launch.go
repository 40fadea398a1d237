package qemu

import (
	"os/exec"
	"runtime"
	"sync"
)

// QEMU is started with PR_SET_PDEATHSIG so that it dies with vmnet. The
// kernel sends that signal when the *thread* that forked it exits, and Go
// ends threads whose goroutine exits while locked to them (netns helpers,
// the KVM probe). So every QEMU is forked from one thread that stays
// locked, and therefore alive, for the life of the process.
var launcher struct {
	once sync.Once
	req  chan launchReq
}

type launchReq struct {
	cmd  *exec.Cmd
	done chan error
}

func startFromLauncher(cmd *exec.Cmd) error {
	launcher.once.Do(func() {
		launcher.req = make(chan launchReq)
		go func() {
			runtime.LockOSThread() // never unlocked: the thread must outlive every QEMU
			for r := range launcher.req {
				r.done <- r.cmd.Start()
			}
		}()
	})
	done := make(chan error, 1)
	launcher.req <- launchReq{cmd, done}
	return <-done
}
