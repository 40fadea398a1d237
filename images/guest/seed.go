package guest

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"mime/multipart"
	"net/netip"
	"net/textproto"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// SeedLabel is the volume label cloud-init's NoCloud data source looks for.
const SeedLabel = "cidata"

// SeedNIC is one guest interface, matched by MAC.
type SeedNIC struct {
	Name      string // name the guest gives it (set-name), e.g. eth0
	MAC       string
	Addresses []netip.Prefix
	MTU       int // 0: leave the default
}

// Seed is the NoCloud data of one VM: identity, network and users.
type Seed struct {
	InstanceID string // changes make cloud-init run its per-instance modules again
	Hostname   string
	NICs       []SeedNIC
	Gateways   []netip.Addr
	DNS        []netip.Addr
	SSHKeys    []string // authorized keys of root and the default user
	// UserData, if set, is the user's own user-data (a #cloud-config,
	// a #! script, ...), sent as a second part after vmnet's, with lists
	// appended to and maps merged into vmnet's cloud-config.
	UserData []byte
}

// MetaData is the meta-data file (JSON, which is YAML).
func (s Seed) MetaData() []byte {
	b, _ := json.MarshalIndent(map[string]string{"instance-id": s.InstanceID, "local-hostname": s.Hostname}, "", "  ")
	return append(b, '\n')
}

// NetworkConfig is the network-config file: version 2, every NIC matched
// by MAC and renamed to its vmnet name; the gateways become default
// routes on the NIC whose addresses contain them.
func (s Seed) NetworkConfig() []byte {
	type route struct {
		To  string `json:"to"`
		Via string `json:"via"`
	}
	type ns struct {
		Addresses []string `json:"addresses"`
	}
	type eth struct {
		Match struct {
			MAC string `json:"macaddress"`
		} `json:"match"`
		SetName     string   `json:"set-name"`
		DHCP4       bool     `json:"dhcp4"`
		DHCP6       bool     `json:"dhcp6"`
		AcceptRA    bool     `json:"accept-ra"`
		Addresses   []string `json:"addresses,omitempty"`
		MTU         int      `json:"mtu,omitempty"`
		Routes      []route  `json:"routes,omitempty"`
		Nameservers *ns      `json:"nameservers,omitempty"`
	}
	eths := map[string]eth{}
	for _, n := range s.NICs {
		var e eth
		e.Match.MAC = strings.ToLower(n.MAC)
		e.SetName = n.Name
		e.MTU = n.MTU
		for _, a := range n.Addresses {
			e.Addresses = append(e.Addresses, a.String())
		}
		for _, gw := range s.Gateways {
			for _, a := range n.Addresses {
				if a.Masked().Contains(gw) {
					to := "0.0.0.0/0"
					if gw.Is6() {
						to = "::/0"
					}
					e.Routes = append(e.Routes, route{To: to, Via: gw.String()})
					break
				}
			}
		}
		if len(s.DNS) > 0 && len(n.Addresses) > 0 {
			e.Nameservers = &ns{}
			for _, d := range s.DNS {
				e.Nameservers.Addresses = append(e.Nameservers.Addresses, d.String())
			}
		}
		eths[n.Name] = e
	}
	b, _ := json.MarshalIndent(map[string]any{"version": 2, "ethernets": eths}, "", "  ")
	return append(b, '\n')
}

// cloudConfig is vmnet's own user-data.
func (s Seed) cloudConfig() []byte {
	cfg := map[string]any{
		"hostname":          s.Hostname,
		"preserve_hostname": false,
		"disable_root":      false,
		"ssh_pwauth":        false,
		// No default user: root with the lab's keys (disable_root false
		// gives root the keys without the "login as ..." prefix).
		"users":               []any{},
		"ssh_authorized_keys": nonNil(s.SSHKeys),
	}
	if len(s.DNS) > 0 {
		// Debian's networkd leaves name servers to systemd-resolved,
		// which the image does not have: write resolv.conf directly.
		var rc strings.Builder
		for _, d := range s.DNS {
			fmt.Fprintf(&rc, "nameserver %s\n", d)
		}
		cfg["write_files"] = []any{map[string]any{"path": "/etc/resolv.conf", "content": rc.String(), "permissions": "0644"}}
	}
	b, _ := json.MarshalIndent(cfg, "", "  ")
	return append([]byte("#cloud-config\n"), append(b, '\n')...)
}

func nonNil(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}

// UserDataFile is the user-data file: vmnet's cloud-config alone, or a
// MIME multipart with the user's part after it.
func (s Seed) UserDataFile() ([]byte, error) {
	own := s.cloudConfig()
	if len(s.UserData) == 0 {
		return own, nil
	}
	var body bytes.Buffer
	w := multipart.NewWriter(&body)
	part := func(typ string, extra map[string]string, data []byte) error {
		h := textproto.MIMEHeader{}
		h.Set("Content-Type", typ+`; charset="utf-8"`)
		for k, v := range extra {
			h.Set(k, v)
		}
		p, err := w.CreatePart(h)
		if err == nil {
			_, err = p.Write(data)
		}
		return err
	}
	if err := part("text/cloud-config", nil, own); err != nil {
		return nil, err
	}
	typ := userDataType(s.UserData)
	if typ == "" {
		return nil, fmt.Errorf("user data does not start with #cloud-config, #! or another cloud-init marker (#include, #cloud-boothook, #part-handler)")
	}
	if err := part(typ, map[string]string{"Merge-Type": "list(append)+dict(recursive_update,no_replace)+str()"}, s.UserData); err != nil {
		return nil, err
	}
	if err := w.Close(); err != nil {
		return nil, err
	}
	head := "Content-Type: multipart/mixed; boundary=\"" + w.Boundary() + "\"\nMIME-Version: 1.0\n\n"
	return append([]byte(head), body.Bytes()...), nil
}

// userDataType maps the first line of a user-data file to its MIME type
// the way cloud-init does.
func userDataType(data []byte) string {
	first, _, _ := bytes.Cut(data, []byte("\n"))
	first = bytes.TrimSpace(first)
	for _, p := range []struct{ prefix, typ string }{
		{"#cloud-config", "text/cloud-config"},
		{"#!", "text/x-shellscript"},
		{"#include", "text/x-include-url"},
		{"#cloud-boothook", "text/cloud-boothook"},
		{"#part-handler", "text/part-handler"},
	} {
		if bytes.HasPrefix(first, []byte(p.prefix)) {
			return p.typ
		}
	}
	return ""
}

// WriteISO writes the seed as an ISO 9660 volume labelled cidata (with
// Joliet and Rock Ridge names, as cloud-localds makes it) using
// genisoimage from Debian's package of that name: the tool cloud-init's
// own cloud-localds runs, small and stable, where a Go ISO writer would
// be a new dependency for three small files.
func WriteISO(ctx context.Context, path string, s Seed) error {
	if _, err := exec.LookPath("genisoimage"); err != nil {
		return fmt.Errorf("cloud-init seed: genisoimage not found (run: sudo apt-get install genisoimage)")
	}
	ud, err := s.UserDataFile()
	if err != nil {
		return fmt.Errorf("cloud-init seed of %s: %w", s.Hostname, err)
	}
	dir, err := os.MkdirTemp(filepath.Dir(path), ".seed-")
	if err != nil {
		return fmt.Errorf("cloud-init seed: %w", err)
	}
	defer os.RemoveAll(dir)
	for name, data := range map[string][]byte{"meta-data": s.MetaData(), "network-config": s.NetworkConfig(), "user-data": ud} {
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o644); err != nil {
			return fmt.Errorf("cloud-init seed: %w", err)
		}
	}
	tmp := path + ".tmp"
	cmd := exec.CommandContext(ctx, "genisoimage", "-quiet", "-output", tmp, "-volid", SeedLabel, "-joliet", "-rock",
		filepath.Join(dir, "meta-data"), filepath.Join(dir, "network-config"), filepath.Join(dir, "user-data"))
	if out, err := cmd.CombinedOutput(); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("cloud-init seed %s: genisoimage: %w: %s", path, err, strings.TrimSpace(string(out)))
	}
	if err := os.Chmod(tmp, 0o644); err != nil {
		return fmt.Errorf("cloud-init seed: %w", err)
	}
	return os.Rename(tmp, path)
}
