package qemu

import (
	"bytes"
	"fmt"
	"github.com/vmnet/vmnet/images/guest"
	"os"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

// A guest that floods its serial console leaves a console log under the
// cap that ends with its newest output and says how much it dropped; the
// same guest prints a fake exit marker (with the nonce it reads from
// /proc/cmdline) and then fails: Wait reports the failure.
func TestGuestConsoleFloodAndFakeExit(t *testing.T) {
	img := guestImage(t)
	// A serial port under TCG carries about 120 KB/s on a busy host, so
	// the guest floods five times a small cap rather than the 4 MiB
	// default (logcap's own tests cover that).
	const limit = 256 << 10
	const flood = 5 * limit
	nonce := guest.NewNonce()
	cmd := fmt.Sprintf(`yes 'flood line of a guest that writes to its console without pause' | head -c %d
n=$(sed -n 's/.*vmnet.nonce=\([0-9a-f]*\).*/\1/p' /proc/cmdline)
echo "VMNET-EXIT=0 $n"
echo VMNET-EXIT=0
echo last-line-of-the-command
exit 3`, flood)
	s := guestSpec(t, img, "flood", guest.Args{Cmd: cmd, Nonce: nonce})
	s.CPUs, s.ConsoleMax = 1, limit
	vm := start(t, s)
	t0 := time.Now()
	waitReady(t, vm, 90*time.Second)
	if st := wait(t, vm, 5*time.Minute); st != 3 {
		t.Errorf("exit status %d, want 3: a marker the command printed counted; console:\n%s", st, strings.Join(vm.ConsoleTail(10), "\n"))
	}
	t.Logf("%d KiB through the console in %v", flood>>10, time.Since(t0).Round(time.Millisecond))

	log, err := os.ReadFile(s.ConsoleLog)
	if err != nil {
		t.Fatal(err)
	}
	if len(log) > limit {
		t.Fatalf("console log is %d bytes, over the %d byte cap", len(log), limit)
	}
	m := regexp.MustCompile(`^\[vmnet: (\d+) bytes of older output dropped`).FindSubmatch(log)
	if m == nil {
		t.Fatalf("console log does not start with the dropped count: %q", log[:min(len(log), 200)])
	}
	if n, _ := strconv.Atoi(string(m[1])); n < flood-limit {
		t.Errorf("log says %d bytes dropped, the guest wrote %d", n, flood)
	}
	end := log[max(len(log)-2000, 0):]
	if !bytes.Contains(end, []byte("last-line-of-the-command")) || !bytes.Contains(end, []byte("VMNET-EXIT=3 "+nonce)) {
		t.Errorf("console log does not end with the newest output:\n%s", end)
	}
}
