package lab

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vmnet/vmnet/netns"
	"github.com/vmnet/vmnet/owner"
	"github.com/vmnet/vmnet/vmconfig"
)

// State directories are vmnet's own. vmnet creates a lab's state
// directory itself and writes a marker file into it first: the lab's name
// and the network namespace it lives in. It refuses a state_dir that
// exists without a marker (a user's directory) or with another lab's, and
// teardown removes only a marked directory and only the files vmnet makes
// in it.
//
// Labs are keyed by (network namespace, name). The default state
// directory is /run/vmnet/ns-INODE/LAB, INODE being the inode of the
// namespace's nsfs file (what `readlink /proc/self/ns/net` shows); a lab
// with its own state_dir also gets /run/vmnet/ns-INODE/LAB as a symbolic
// link to it, so `vmnet status` and `vmnet down LAB` find it by name and a
// second lab of the same name in that namespace is refused.

// markerFile marks a directory as a lab's state directory.
const markerFile = ".vmnet-lab"

// Marker is the content of markerFile.
type Marker struct {
	Lab     string    `json:"lab"`
	NetNS   NetNS     `json:"netns"`
	Created time.Time `json:"created"`
}

// NetNS is the network namespace a lab lives in.
type NetNS struct {
	netns.ID
	// Name is the namespace's `ip netns` name when it had one.
	Name string `json:"name,omitempty"`
}

// CurrentNetNS identifies the calling thread's network namespace.
func CurrentNetNS() (NetNS, error) {
	id, err := netns.Identify()
	if err != nil {
		return NetNS{}, err
	}
	n := NetNS{ID: id}
	if ns := netns.NamesOf(id); len(ns) > 0 {
		n.Name = ns[0]
	}
	return n, nil
}

// Key names ns's directory under DefaultStateRoot.
func (n NetNS) Key() string { return "ns-" + strconv.FormatUint(n.Ino, 10) }

// String names ns for people: its `ip netns` name, or net:[INODE].
func (n NetNS) String() string {
	if n.Name != "" {
		return n.Name
	}
	return n.ID.String()
}

// StateRoot is the directory of ns's default lab state directories.
func StateRoot(ns NetNS) string { return filepath.Join(DefaultStateRoot, ns.Key()) }

// ReadMarker reads the marker of a state directory; a directory without
// one is reported with os.ErrNotExist.
func ReadMarker(dir string) (*Marker, error) {
	b, err := os.ReadFile(filepath.Join(dir, markerFile))
	if err != nil {
		return nil, err
	}
	var m Marker
	if err := json.Unmarshal(b, &m); err != nil || m.Lab == "" {
		return nil, fmt.Errorf("%s: not a vmnet state marker (%v)", filepath.Join(dir, markerFile), err)
	}
	return &m, nil
}

// ClaimStateDir makes cfg's state directory vmnet's for the lab in ns: it
// creates and marks it, or accepts it when it already carries this lab's
// marker for ns. Anything else is refused and left alone.
func ClaimStateDir(cfg *vmconfig.Lab, ns NetNS) (err error) {
	// RemoveStateDir of another lab removes the namespace's state root when
	// it empties; a claim that loses that race finds its parent gone and
	// starts again.
	for try := 0; ; try++ {
		err = claimStateDir(cfg, ns)
		if try == 2 || !errors.Is(err, os.ErrNotExist) {
			return err
		}
	}
}

func claimStateDir(cfg *vmconfig.Lab, ns NetNS) (err error) {
	dir := cfg.StateDir
	entry := filepath.Join(StateRoot(ns), cfg.Name)
	if err := os.MkdirAll(StateRoot(ns), 0o700); err != nil {
		return fmt.Errorf("lab %s: state directory: %w", cfg.Name, err)
	}
	if dir != entry {
		made, cerr := claimEntry(cfg, entry)
		if cerr != nil {
			return cerr
		}
		if made {
			defer func() {
				if err != nil {
					os.Remove(entry)
				}
			}()
		}
	}
	if err := os.MkdirAll(filepath.Dir(dir), 0o700); err != nil {
		return fmt.Errorf("lab %s: state directory: %w", cfg.Name, err)
	}
	switch err := os.Mkdir(dir, 0o700); {
	case err == nil:
		return writeMarker(cfg, ns)
	case !errors.Is(err, os.ErrExist):
		return fmt.Errorf("lab %s: state directory: %w", cfg.Name, err)
	}
	fi, err := os.Lstat(dir)
	if err != nil {
		return fmt.Errorf("lab %s: state directory: %w", cfg.Name, err)
	}
	if !fi.IsDir() {
		return fmt.Errorf("lab %s: state_dir %s exists and is not a directory; name a path that does not exist yet (vmnet creates it)", cfg.Name, dir)
	}
	m, err := ReadMarker(dir)
	switch {
	case errors.Is(err, os.ErrNotExist):
		return fmt.Errorf("lab %s: state_dir %s exists and is not a vmnet state directory (no %s in it); vmnet removes its state directory on teardown, so name a path that does not exist yet and vmnet creates it",
			cfg.Name, dir, markerFile)
	case err != nil:
		return fmt.Errorf("lab %s: state_dir %s: %w", cfg.Name, dir, err)
	case m.Lab != cfg.Name:
		return fmt.Errorf("lab %s: state_dir %s belongs to lab %s; give each lab a state_dir of its own", cfg.Name, dir, m.Lab)
	case m.NetNS.ID != ns.ID:
		return fmt.Errorf("lab %s: state_dir %s belongs to lab %s in another network namespace (%s); give each a state_dir of its own or run `vmnet --netns %s down %s` first",
			cfg.Name, dir, m.Lab, where(m, nil), where(m, nil), m.Lab)
	}
	return nil
}

// claimEntry makes entry (the lab's name in its namespace's state root) a
// link to cfg's own state_dir. made says whether it created the link.
func claimEntry(cfg *vmconfig.Lab, entry string) (made bool, err error) {
	if err := os.Symlink(cfg.StateDir, entry); err == nil {
		return true, nil
	} else if !errors.Is(err, os.ErrExist) {
		return false, fmt.Errorf("lab %s: state directory link: %w", cfg.Name, err)
	}
	if target, err := os.Readlink(entry); err == nil && target == cfg.StateDir {
		return false, nil
	}
	other := entry
	if target, err := os.Readlink(entry); err == nil {
		other = target
	}
	return false, fmt.Errorf("lab %s is already up in this network namespace with its state in %s (another lab file of that name?); run `vmnet down %s` first or rename the lab",
		cfg.Name, other, cfg.Name)
}

func writeMarker(cfg *vmconfig.Lab, ns NetNS) error {
	b, err := json.MarshalIndent(Marker{Lab: cfg.Name, NetNS: ns, Created: time.Now().UTC()}, "", "  ")
	if err != nil {
		return err
	}
	path := filepath.Join(cfg.StateDir, markerFile)
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL|syscall.O_NOFOLLOW, 0o600)
	if err != nil {
		return fmt.Errorf("lab %s: mark state directory: %w", cfg.Name, err)
	}
	_, err = f.Write(append(b, '\n'))
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(path)
		os.Remove(cfg.StateDir)
		return fmt.Errorf("lab %s: mark state directory: %w", cfg.Name, err)
	}
	return nil
}

// RemoveStateDir removes the state directory of the lab name: only when
// it carries name's marker, and only the files vmnet makes there; the
// marker goes last, then the directory, then its link in the namespace's
// state root. A directory that still holds other files stays, and the
// error lists them.
func RemoveStateDir(dir, name string, ns NetNS) error {
	dir = resolveEntry(dir)
	m, err := ReadMarker(dir)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil // not vmnet's, or already gone: nothing of ours to remove
		}
		return err
	}
	if m.Lab != name {
		return fmt.Errorf("%s belongs to lab %s, not %s; left alone", dir, m.Lab, name)
	}
	var vms []string
	if st, err := ReadState(dir); err == nil {
		for _, vm := range st.VMs {
			vms = append(vms, vm.Name)
		}
	}
	ents, err := os.ReadDir(dir)
	if err != nil {
		return err
	}
	var left []string
	for _, e := range ents {
		n := e.Name()
		if n == markerFile {
			continue
		}
		if !ours(n, vms) {
			left = append(left, n)
			continue
		}
		p := filepath.Join(dir, n)
		if e.IsDir() {
			err = os.RemoveAll(p) // vm-NAME: a directory vmnet made for one guest
		} else {
			err = os.Remove(p)
		}
		if err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("lab %s: remove %s: %w", name, p, err)
		}
	}
	if len(left) > 0 {
		return fmt.Errorf("lab %s: state directory %s kept: it holds files vmnet did not make (%s); remove them, then run `vmnet down %s` again",
			name, dir, strings.Join(left, ", "), name)
	}
	if err := os.Remove(filepath.Join(dir, markerFile)); err != nil {
		return err
	}
	if err := os.Remove(dir); err != nil {
		return fmt.Errorf("lab %s: remove state directory: %w", name, err)
	}
	entry := filepath.Join(StateRoot(ns), name)
	if target, err := os.Readlink(entry); err == nil && target == dir {
		os.Remove(entry)
	}
	// The namespace's state root goes with its last lab (rmdir refuses
	// while anything is left in it), so namespaces that come and go leave
	// no empty ns-* directories behind.
	os.Remove(StateRoot(ns))
	return nil
}

// resolveEntry turns a lab's entry in a state root that links to the
// lab's own state_dir into that directory; other paths stay as they are.
func resolveEntry(dir string) string {
	if fi, err := os.Lstat(dir); err == nil && fi.Mode()&os.ModeSymlink != 0 {
		if target, err := os.Readlink(dir); err == nil && filepath.IsAbs(target) {
			return target
		}
	}
	return dir
}

// ours reports whether n is a name vmnet makes in a state directory.
func ours(n string, vms []string) bool {
	switch n {
	case stateFile, "lock", "supervisor.log", controlSocket, "image", LabKeyFile, LabKeyFile + ".pub":
		return true
	}
	if strings.HasPrefix(n, ".state-") || strings.HasPrefix(n, "supervisor.log.") {
		return true
	}
	if vm, ok := strings.CutPrefix(n, "vm-"); ok {
		return slices.Contains(vms, vm)
	}
	for _, vm := range vms {
		if n == vm+".console" || strings.HasPrefix(n, vm+".console.") {
			return true
		}
	}
	return false
}

// Labs returns the names of the labs that exist in ns: those with a state
// directory in its state root and those whose tagged interfaces are in the
// calling thread's namespace (which must be ns).
func Labs(ns NetNS) ([]string, error) {
	var out []string
	ents, _ := os.ReadDir(StateRoot(ns))
	for _, e := range ents {
		if m, err := ReadMarker(filepath.Join(StateRoot(ns), e.Name())); err == nil && m.Lab == e.Name() {
			out = append(out, m.Lab)
		}
	}
	links, err := owner.ListAll(&netlink.Handle{})
	if err != nil {
		return nil, err
	}
	for _, l := range links {
		got, _ := owner.Of(l)
		if name, ok := owner.LabName(got); ok {
			out = append(out, name)
		}
	}
	slices.Sort(out)
	return slices.Compact(out), nil
}

// Tagged counts the interfaces tagged as the lab name's in the calling
// thread's namespace.
func Tagged(name string) (int, error) {
	links, err := owner.List(&netlink.Handle{}, owner.Lab(name))
	return len(links), err
}

// Elsewhere is a lab of the wanted name in another network namespace.
type Elsewhere struct {
	Dir    string
	Marker *Marker
	State  *State // nil without a state file
}

// Where names the namespace for `vmnet --netns WHERE`: its `ip netns`
// name while that still refers to it, else the namespace file of the
// lab's live supervisor's thread in it, else net:[INODE].
func (e Elsewhere) Where() string { return where(e.Marker, e.State) }

func where(m *Marker, st *State) string {
	if name := netnsName(m.NetNS); name != "" {
		return name
	}
	if st != nil && st.SupervisorAlive() {
		// The supervisor works in the lab's namespace on one thread
		// (`vmnet --netns`), which need not be its main thread.
		tasks, _ := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/ns/net", st.Supervisor))
		for _, p := range tasks {
			if id, err := netns.IdentifyPath(p); err == nil && id == m.NetNS.ID {
				return p
			}
		}
	}
	return m.NetNS.ID.String()
}

// netnsName is ns's `ip netns` name while that still refers to it, or
// another name it has now; "" when it has none.
func netnsName(ns NetNS) string {
	if ns.Name != "" {
		if id, err := netns.IdentifyPath(filepath.Join("/run/netns", ns.Name)); err == nil && id == ns.ID {
			return ns.Name
		}
	}
	for _, name := range netns.NamesOf(ns.ID) {
		return name
	}
	return ""
}

// FindElsewhere returns the labs called name in network namespaces other
// than ns, from their state directories.
func FindElsewhere(name string, ns NetNS) []Elsewhere {
	roots, _ := filepath.Glob(filepath.Join(DefaultStateRoot, "ns-*"))
	var out []Elsewhere
	for _, root := range roots {
		if root == StateRoot(ns) {
			continue
		}
		dir := filepath.Join(root, name)
		m, err := ReadMarker(dir)
		if err != nil || m.Lab != name || m.NetNS.ID == ns.ID {
			continue
		}
		e := Elsewhere{Dir: dir, Marker: m}
		if target, err := os.Readlink(dir); err == nil {
			e.Dir = target
		}
		e.State, _ = ReadState(dir)
		out = append(out, e)
	}
	return out
}

// NotHere is the error for a lab that is in another namespace only.
func NotHere(name, verb string, es []Elsewhere) error {
	var b strings.Builder
	fmt.Fprintf(&b, "lab %s is not in this network namespace; it is up in namespace %s: run `vmnet --netns %s %s %s`",
		name, es[0].Where(), es[0].Where(), verb, name)
	for _, e := range es[1:] {
		fmt.Fprintf(&b, "; also in namespace %s", e.Where())
	}
	return errors.New(b.String())
}
