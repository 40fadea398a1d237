package lab

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"text/tabwriter"
)

// Listed is one lab as `vmnet ls` shows it.
type Listed struct {
	Name string `json:"name"`
	// NetNS names the lab's network namespace: its `ip netns` name, else
	// net:[INODE] (what `readlink /proc/PID/ns/net` shows). vmnet status
	// and down name a way in for `vmnet --netns` when there is one.
	NetNS string `json:"netns"`
	// State is "up" (its supervisor runs), "stale" (a supervisor
	// recorded the lab and is gone, or vmnet's interfaces are left
	// without a state directory: `vmnet down` cleans up) or "stopped"
	// (only the state directory is left, nothing was started in it).
	State    string   `json:"state"`
	Phase    string   `json:"phase,omitempty"` // the supervisor's: starting, up, stopping
	VMs      []string `json:"vms"`
	StateDir string   `json:"state_dir,omitempty"`
	Config   string   `json:"config,omitempty"`
}

// The states of Listed.State.
const (
	ListedUp      = "up"
	ListedStale   = "stale"
	ListedStopped = "stopped"
)

// List returns the labs of every network namespace that has a state root
// under DefaultStateRoot, and the labs in the calling thread's namespace
// that left tagged interfaces but no state directory, sorted by namespace
// and name.
func List() ([]Listed, error) {
	out := listRoot(DefaultStateRoot)
	here, err := CurrentNetNS()
	if err != nil {
		return out, err
	}
	tagged, err := Labs(here)
	if err != nil {
		return out, err
	}
	for _, name := range tagged {
		known := slices.ContainsFunc(out, func(l Listed) bool { return l.Name == name && l.NetNS == nsString(here) })
		if !known {
			out = append(out, Listed{Name: name, NetNS: nsString(here), State: ListedStale, VMs: []string{}})
		}
	}
	sortListed(out)
	return out, nil
}

// listRoot reads the labs from the state directories under root.
func listRoot(root string) []Listed {
	out := []Listed{}
	nsDirs, _ := filepath.Glob(filepath.Join(root, "ns-*"))
	for _, nsDir := range nsDirs {
		ents, _ := os.ReadDir(nsDir)
		for _, e := range ents {
			dir := filepath.Join(nsDir, e.Name())
			m, err := ReadMarker(dir)
			if err != nil || m.Lab != e.Name() {
				continue // not a lab's state directory (or a link to one)
			}
			l := Listed{Name: m.Lab, State: ListedStopped, VMs: []string{}, StateDir: resolveEntry(dir)}
			st, _ := ReadState(dir)
			if st != nil {
				l.State, l.Phase, l.Config = ListedStale, st.Phase, st.Config
				if st.SupervisorAlive() {
					l.State = ListedUp
				}
				for _, vm := range st.VMs {
					l.VMs = append(l.VMs, vm.Name)
				}
			}
			l.NetNS = nsString(m.NetNS)
			out = append(out, l)
		}
	}
	sortListed(out)
	return out
}

// nsString names ns the same way for every lab in it.
func nsString(ns NetNS) string {
	if name := netnsName(ns); name != "" {
		return name
	}
	return ns.ID.String()
}

func sortListed(ls []Listed) {
	slices.SortFunc(ls, func(a, b Listed) int {
		if c := strings.Compare(a.NetNS, b.NetNS); c != 0 {
			return c
		}
		return strings.Compare(a.Name, b.Name)
	})
}

// ListFormats are the output formats of `vmnet ls -o`.
var ListFormats = []string{"table", "json"}

// WriteList prints labs in one of ListFormats: a table with a header
// (or a line saying there are none), or a JSON list ([] for none).
func WriteList(w io.Writer, format string, labs []Listed) error {
	switch format {
	case "table", "":
		if len(labs) == 0 {
			_, err := fmt.Fprintln(w, "no labs")
			return err
		}
		tw := tabwriter.NewWriter(w, 0, 8, 2, ' ', 0)
		fmt.Fprintln(tw, "LAB\tNETNS\tSTATE\tVMS")
		for _, l := range labs {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", l.Name, l.NetNS, l.State, dash(strings.Join(l.VMs, ",")))
		}
		return tw.Flush()
	case "json":
		if labs == nil {
			labs = []Listed{}
		}
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(labs)
	}
	return fmt.Errorf("unknown output format %q: use one of %s", format, strings.Join(ListFormats, ", "))
}
