package lab

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/vmnet/vmnet/images"
	"github.com/vmnet/vmnet/images/guest"
	"github.com/vmnet/vmnet/internal/qemu"
	"github.com/vmnet/vmnet/netns"
	"github.com/vmnet/vmnet/vmconfig"
)

// Files in a VM's run directory for named images.
const (
	agentSocket = "agent.sock" // the guest agent's virtio-serial channel
	seedFile    = "seed.iso"   // the cloud-init NoCloud seed
)

// LabKeyFile is the SSH key vmnet generates for a lab whose file lists no
// ssh_authorized_keys, in the lab's run directory (.pub beside it).
const LabKeyFile = "id_ed25519"

// namedImage returns the named image, building it on first use.
func (l *Lab) namedImage(ctx context.Context, name string) (images.Disk, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if d, ok := l.named[name]; ok {
		return d, nil
	}
	done := l.step("image " + name)
	d, err := images.EnsureNamed(ctx, name, images.Options{Progress: l.opts.ImageProgress})
	done(err)
	if err != nil {
		return d, err
	}
	if l.named == nil {
		l.named = map[string]images.Disk{}
	}
	l.named[name] = d
	return d, nil
}

// bootNamed fills spec for a VM with image = "...": the image's kernel,
// initrd and disk (under an overlay: the image is never written), the seed and
// the guest agent channel.
func (l *Lab) bootNamed(ctx context.Context, vm *vmconfig.VM, spec *qemu.Spec) error {
	d, err := l.namedImage(ctx, vm.Image)
	if err != nil {
		return fmt.Errorf("vm %s: %w", vm.Name, err)
	}
	spec.Kernel, spec.Initrd = d.Kernel, d.Initrd
	// The image is the boot disk under the VM's own overlay (or
	// whatever disk_mode says), before the lab file's other disks.
	spec.Disks = append([]qemu.Disk{{Path: d.Disk, Format: d.Format, Mode: vm.ImageMode}}, spec.Disks...)
	spec.Append = d.Cmdline
	if vm.Append != "" {
		spec.Append += " " + vm.Append
	}
	// A distribution powers off through systemd (acpid in the image
	// sees the power button), which stops its services first.
	spec.PowerdownGrace = namedPowerdownGrace
	return nil
}

// namedPowerdownGrace bounds a named image's clean poweroff after the
// ACPI power button before vmnet quits QEMU: systemd stopping cloud-init,
// the agent, sshd and journald under TCG on a loaded machine.
const namedPowerdownGrace = 30 * time.Second

// guestSetup adds what every VM needs besides its boot files: the agent
// channel when vmnet waits for the agent, and the cloud-init seed.
func (l *Lab) guestSetup(ctx context.Context, vm *vmconfig.VM, spec *qemu.Spec) error {
	if vm.Readiness == vmconfig.ReadyAgent || vm.Image != "" {
		// Named images run qemu-guest-agent: `vmnet sh` and `vmnet run`
		// use it whatever the readiness method.
		spec.AgentSocket = filepath.Join(spec.RunDir, agentSocket)
	}
	if !vm.CloudInit {
		return nil
	}
	if err := qemu.RootDir(l.opts.RunDir, 0o711); err != nil {
		return fmt.Errorf("vm %s: %w", vm.Name, err)
	}
	if err := qemu.RootDir(spec.RunDir, 0o700); err != nil {
		return fmt.Errorf("vm %s: run dir: %w", vm.Name, err)
	}
	seed, err := l.seed(vm)
	if err != nil {
		return err
	}
	path := filepath.Join(spec.RunDir, seedFile)
	if err := guest.WriteISO(ctx, path, seed); err != nil {
		return fmt.Errorf("vm %s: %w", vm.Name, err)
	}
	spec.Disks = append(spec.Disks, qemu.Disk{Path: path, Format: "raw", ReadOnly: true})
	return nil
}

// seed is the NoCloud data of vm from the lab file.
func (l *Lab) seed(vm *vmconfig.VM) (guest.Seed, error) {
	s := guest.Seed{
		// A new instance id per boot of the lab: cloud-init then applies
		// this boot's network and keys even if a disk kept its state.
		InstanceID: fmt.Sprintf("%s-%s-%d", l.cfg.Name, vm.Name, time.Now().UnixNano()),
		Hostname:   vm.Name,
		Gateways:   vm.Gateways,
		DNS:        vm.DNS,
		SSHKeys:    l.cfg.SSHAuthorizedKeys,
	}
	for i, nic := range vm.NICs {
		mtu := nic.MTU
		if n := l.network(nic.Network); n != nil && mtu == 0 {
			mtu = n.MTU
		}
		s.NICs = append(s.NICs, guest.SeedNIC{Name: "eth" + strconv.Itoa(i), MAC: nic.MAC.String(), Addresses: nic.Addresses, MTU: mtu})
	}
	if len(s.SSHKeys) == 0 {
		pub, err := l.labKey()
		if err != nil {
			return s, fmt.Errorf("vm %s: %w", vm.Name, err)
		}
		s.SSHKeys = []string{pub}
	}
	if vm.UserData != "" {
		data, err := os.ReadFile(vm.UserData)
		if err != nil {
			return s, fmt.Errorf("vm %s: user_data: %w", vm.Name, err)
		}
		s.UserData = data
	}
	return s, nil
}

// labKey returns the lab's own SSH public key, generating the key pair in
// the run directory on first use (private key 0600, OpenSSH format).
func (l *Lab) labKey() (string, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	priv := filepath.Join(l.opts.RunDir, LabKeyFile)
	if data, err := os.ReadFile(priv + ".pub"); err == nil {
		return strings.TrimSpace(string(data)), nil
	}
	pub, key, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return "", fmt.Errorf("lab %s: SSH key: %w", l.cfg.Name, err)
	}
	block, err := ssh.MarshalPrivateKey(key, "vmnet lab "+l.cfg.Name)
	if err != nil {
		return "", fmt.Errorf("lab %s: SSH key: %w", l.cfg.Name, err)
	}
	sp, err := ssh.NewPublicKey(pub)
	if err != nil {
		return "", fmt.Errorf("lab %s: SSH key: %w", l.cfg.Name, err)
	}
	line := strings.TrimSpace(string(ssh.MarshalAuthorizedKey(sp))) + " vmnet-lab-" + l.cfg.Name
	if err := os.WriteFile(priv, pem.EncodeToMemory(block), 0o600); err != nil {
		return "", fmt.Errorf("lab %s: SSH key: %w", l.cfg.Name, err)
	}
	if err := os.WriteFile(priv+".pub", []byte(line+"\n"), 0o644); err != nil {
		return "", fmt.Errorf("lab %s: SSH key: %w", l.cfg.Name, err)
	}
	return line, nil
}

// waitReady waits until vm is ready by its readiness method. A guest that
// does not become ready in time gets an error naming the method, with the
// console's last lines.
func (l *Lab) waitReady(ctx context.Context, vm *vmconfig.VM, v *qemu.VM) error {
	method := readiness(vm)
	switch method {
	case vmconfig.ReadyConsole:
		return v.WaitReady(ctx)
	case vmconfig.ReadyNone:
		return nil
	}
	start := time.Now()
	errc := make(chan error, 1)
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		switch method {
		case vmconfig.ReadyAgent:
			a := &guest.Agent{Path: filepath.Join(l.runDir(vm.Name), agentSocket), Name: vm.Name}
			defer a.Close()
			errc <- a.WaitReady(wctx, 2*time.Second)
		case vmconfig.ReadySSH:
			// A new goroutine's thread is not in the lab's namespace:
			// connect from there explicitly.
			errc <- netns.Do(l.ns, func() error { return waitSSH(wctx, vm) })
		default:
			errc <- fmt.Errorf("vm %s: unknown readiness %q", vm.Name, method)
		}
	}()
	what := map[string]string{
		vmconfig.ReadyAgent: "the QEMU guest agent did not answer guest-ping",
		vmconfig.ReadySSH:   "no SSH server answered on port 22",
	}[method]
	var err error
	select {
	case err = <-errc:
		if err == nil {
			return nil
		}
	case <-v.Exited():
		return fmt.Errorf("vm %s: QEMU exited before the guest was ready (readiness %s); QEMU stderr: %s; last console lines:\n%s",
			vm.Name, method, strings.TrimSpace(v.Stderr()), strings.Join(v.ConsoleTail(15), "\n"))
	}
	hint := ""
	switch {
	case method == vmconfig.ReadyAgent && vm.Image == "" && vm.CloudInit:
		hint = " (does the image have cloud-init and qemu-guest-agent? for an image without them use readiness = \"none\" or \"ssh\" and cloud_init = false)"
	case method == vmconfig.ReadyAgent && vm.Image == "":
		hint = " (does the image run qemu-guest-agent? for an image without it use readiness = \"none\" or \"ssh\")"
	}
	why := ""
	if ctx.Err() == nil { // an answer that was wrong, not silence
		why = ": " + err.Error()
	}
	return fmt.Errorf("vm %s: not ready after %v: readiness %s: %s%s%s; last console lines:\n%s",
		vm.Name, time.Since(start).Round(time.Second), method, what, hint, why, strings.Join(v.ConsoleTail(15), "\n"))
}

// readiness is vm's readiness method; a VM made without vmconfig's
// defaults waits as before readiness existed: for the test image's
// marker, or not at all for its own kernel or disk.
func readiness(vm *vmconfig.VM) string {
	switch {
	case vm.Readiness != "":
		return vm.Readiness
	case vm.Kernel == "" && vm.Disk == "" && vm.Image == "":
		return vmconfig.ReadyConsole
	}
	return vmconfig.ReadyNone
}

// runAgent runs cmd in vm through its guest agent for Run and returns the
// command's exit status.
func (l *Lab) runAgent(ctx context.Context, vm *vmconfig.VM, cmd string, opts RunOptions) (int, error) {
	if cmd == "" {
		return 0, fmt.Errorf("vm %s: no command: give one after --; image %s runs none of its own", vm.Name, vm.Image)
	}
	a := &guest.Agent{Path: filepath.Join(l.runDir(vm.Name), agentSocket), Name: vm.Name}
	defer a.Close()
	wctx, cancel := context.WithTimeout(ctx, opts.Timeout)
	defer cancel()
	if readiness(vm) != vmconfig.ReadyAgent {
		// Ready by another method: the agent may still be starting.
		if err := a.WaitReady(wctx, 2*time.Second); err != nil {
			return 0, timedOut(ctx, wctx, err)
		}
	}
	st, err := a.Run(wctx, cmd)
	if err != nil {
		return 0, timedOut(ctx, wctx, err)
	}
	stdout, stderr := opts.Stdout, opts.Stderr
	if stdout == nil {
		stdout = opts.Console
	}
	if stderr == nil {
		stderr = stdout
	}
	if stdout != nil {
		stdout.Write(st.Stdout)
	}
	if stderr != nil {
		stderr.Write(st.Stderr)
	}
	return st.ExitCode, nil
}

// waitSSH waits until something answers with an SSH banner on port 22 of
// the VM's first address.
func waitSSH(ctx context.Context, vm *vmconfig.VM) error {
	var addr netip.Addr
	for _, n := range vm.NICs {
		if len(n.Addresses) > 0 {
			addr = n.Addresses[0].Addr()
			break
		}
	}
	if !addr.IsValid() {
		return errors.New("the VM has no address to reach it on: give a NIC an address")
	}
	target := net.JoinHostPort(addr.String(), "22")
	var last error
	for {
		last = sshBanner(ctx, target)
		if last == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s: %w", target, last)
		case <-time.After(time.Second):
		}
	}
}

func sshBanner(ctx context.Context, target string) error {
	cctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	var d net.Dialer
	c, err := d.DialContext(cctx, "tcp", target)
	if err != nil {
		return err
	}
	defer c.Close()
	dl, _ := cctx.Deadline()
	c.SetDeadline(dl)
	buf := make([]byte, 4)
	if _, err := c.Read(buf); err != nil {
		return err
	}
	if string(buf) != "SSH-" {
		return fmt.Errorf("%s answered %q, not an SSH banner", target, buf)
	}
	return nil
}
