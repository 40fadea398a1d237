package main

import (
	"os"
	"testing"

	"github.com/vmnet/vmnet/internal/testenv"
)

// TestMain runs the tests with a private /run: lab verbs read and remove
// state under /run/vmnet.
func TestMain(m *testing.M) {
	testenv.PrivateRun()
	os.Exit(m.Run())
}
