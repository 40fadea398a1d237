package lab

import (
	"os"
	"testing"

	"github.com/vmnet/vmnet/internal/testenv"
)

// TestMain runs the tests with a private /run: they create and remove
// lab state directories.
func TestMain(m *testing.M) {
	testenv.PrivateRun()
	code := m.Run()
	stopHostHelper()
	os.Exit(code)
}
