package testenv

import (
	"flag"
	"strconv"
)

// RaiseParallel raises how many parallel tests of the package run at
// once (-test.parallel) to at least n, unless the command line set it.
// Call it from TestMain after flag.Parse. go test's default is
// GOMAXPROCS, which is 1 in a one-vCPU guest (`go test -exec 'vmnet
// exec'`): tests that mostly wait (on timers, on the kernel's queues, on
// the programs they start) then wait one after the other instead of
// while others compute. Only for packages whose parallel tests share no
// state: each in its own network namespace.
func RaiseParallel(n int) {
	f := flag.Lookup("test.parallel")
	if f == nil {
		return
	}
	set := false
	flag.Visit(func(g *flag.Flag) { set = set || g == f })
	if cur, err := strconv.Atoi(f.Value.String()); set || err != nil || cur >= n {
		return
	}
	_ = f.Value.Set(strconv.Itoa(n))
}
