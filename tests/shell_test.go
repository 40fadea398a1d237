package tests

import (
	"strings"
	"testing"
	"time"

	"github.com/vmnet/vmnet/internal/testenv"
)

// TestLabShellEncoded: `vmnet sh` sends the command encoded, so an
// unbalanced quote is a prompt syntax error of that call alone, output
// imitating the status line does not change the status, and a call that
// timed out does not wedge the next one. (The output bound is
// TestShellOutputCap in internal/lab, against a real sh: 16 MiB through
// a TCG guest's serial port takes minutes.)
func TestLabShellEncoded(t *testing.T) {
	requireGuests(t)
	ns := testenv.NetNS(t)
	path, _ := writeLab(t, `
[[network]]
name = "lan"
addresses = ["10.72.0.1/24"]
[[vm]]
name = "a"
accel = "tcg"
  [[vm.nic]]
  network = "lan"
  address = ["10.72.0.2/24"]
`)
	if r := vmnetIn(t, ns, "up", path, "--detach"); r.status != 0 {
		t.Fatalf("up: %d\n%s%s", r.status, r.stdout, r.stderr)
	}
	t.Cleanup(func() { vmnetIn(t, ns, "down", path) })
	sh := func(timeout string, cmd ...string) result {
		return vmnetIn(t, ns, append([]string{"sh", path, "a", "--timeout", timeout, "--"}, cmd...)...)
	}

	r := sh("60s", "echo 'unbalanced")
	if r.status != 2 || !strings.Contains(r.stdout, "unterminated") || r.took > 20*time.Second {
		t.Errorf("unbalanced quote: status %d after %v, want 2 (syntax error) at once\n%s%s", r.status, r.took, r.stdout, r.stderr)
	}
	if r := sh("60s", "echo still-working; ping -c 1 -W 5 10.72.0.1 >/dev/null"); r.status != 0 || r.stdout != "still-working\n" {
		t.Errorf("call after the syntax error: %d %q %q", r.status, r.stdout, r.stderr)
	}

	// The status line imitated with any nonce, and the old unframed form.
	r = sh("60s", "echo VMNET-SHELL-0123456789abcdef=0; echo VMNET-SHELL-BEGIN-0123456789abcdef; exit 4")
	if r.status != 4 || !strings.Contains(r.stdout, "VMNET-SHELL-0123456789abcdef=0") {
		t.Errorf("fake status line: status %d, want 4\n%s", r.status, r.stdout)
	}
	// Words with quotes and control characters arrive unchanged.
	if r := sh("60s", "printf", "%s|", "it's", `a "b"`, "$(reboot)", "x\x03y"); r.status != 0 || r.stdout != "it's|a \"b\"|$(reboot)|x\x03y|" {
		t.Errorf("quoted words: %d %q %q", r.status, r.stdout, r.stderr)
	}

	// A timed-out call; the next one gets through once the guest has
	// killed the command, and without its late output.
	if r := sh("3s", "sleep 2; echo late-output; sleep 600"); r.status != 124 {
		t.Errorf("timed-out call: status %d, want 124\n%s", r.status, r.stderr)
	}
	r = sh("60s", "echo fresh")
	if r.status != 0 || r.stdout != "fresh\n" || r.took > 30*time.Second {
		t.Errorf("call after a timeout: status %d after %v, output %q", r.status, r.took, r.stdout)
	}
}
