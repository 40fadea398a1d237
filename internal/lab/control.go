package lab

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"time"

	"github.com/vmnet/vmnet/internal/link"
	"github.com/vmnet/vmnet/internal/qemu"
)

// The supervisor answers on a unix socket in the state directory, one
// JSON request and one JSON response per connection, so that other vmnet
// commands can ask it about its guests and change them while it holds the
// tap fds and the QMP connections.
const controlSocket = "control.sock"

// maxControlMessage bounds one request or response: responses carry
// strings from QMP and the guests' state, which is no reason to read
// without end.
const maxControlMessage = 4 << 20

// Request is one control call.
type Request struct {
	Op      string `json:"op"` // vm-status, nic-add, nic-del, nic-set, link-set
	VM      string `json:"vm,omitempty"`
	Network string `json:"network,omitempty"`
	Queues  int    `json:"queues,omitempty"`
	MAC     string `json:"mac,omitempty"`
	NIC     string `json:"nic,omitempty"`
	// link-set: the link's index and the impairment keys to change, by
	// direction ("" for both, "a_to_b", "b_to_a"), lab-file key to value.
	// nic-set: VM, NIC and the keys under "".
	Link   int                          `json:"link,omitempty"`
	Impair map[string]map[string]string `json:"impair,omitempty"`
}

// Response answers a Request.
type Response struct {
	Error    string            `json:"error,omitempty"`
	VMStatus map[string]string `json:"vm_status,omitempty"`
	Links    []link.Stats      `json:"links,omitempty"`
	NIC      *NICState         `json:"nic,omitempty"`
	// NICImpairment answers nic-set: the NIC's impairment now, in
	// tc-netem's words ("none" without).
	NICImpairment string `json:"nic_impairment,omitempty"`
}

// Listen opens the lab's control socket. Call it after Up, and Serve
// on it: a lab is only reported up once the socket answers.
func (l *Lab) Listen() (*net.UnixListener, error) {
	path := filepath.Join(l.cfg.StateDir, controlSocket)
	// Root only: the state directory is searchable by everyone (0711).
	f, err := qemu.ListenUnix(path, 0o600)
	if err != nil {
		return nil, fmt.Errorf("lab %s: control socket: %w", l.cfg.Name, err)
	}
	fl, err := net.FileListener(f)
	f.Close()
	if err != nil {
		os.Remove(path)
		return nil, fmt.Errorf("lab %s: control socket: %w", l.cfg.Name, err)
	}
	return fl.(*net.UnixListener), nil
}

// Serve answers control requests on ln until ctx ends.
func (l *Lab) Serve(ctx context.Context, ln *net.UnixListener) error {
	go func() {
		<-ctx.Done()
		ln.Close()
	}()
	for {
		c, err := ln.AcceptUnix()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("lab %s: control socket: %w", l.cfg.Name, err)
		}
		go l.answer(ctx, c)
	}
}

func (l *Lab) answer(ctx context.Context, c *net.UnixConn) {
	defer c.Close()
	c.SetDeadline(time.Now().Add(2 * time.Minute))
	var req Request
	var resp Response
	if err := json.NewDecoder(io.LimitReader(c, maxControlMessage)).Decode(&req); err != nil {
		resp.Error = "bad request: " + err.Error()
	} else if err := l.handle(ctx, req, &resp); err != nil {
		resp.Error = err.Error()
	}
	json.NewEncoder(c).Encode(resp)
}

func (l *Lab) handle(ctx context.Context, req Request, resp *Response) error {
	switch req.Op {
	case "vm-status":
		resp.VMStatus = map[string]string{}
		for _, vm := range l.cfg.VMs {
			v := l.Running(vm.Name)
			if v == nil {
				resp.VMStatus[vm.Name] = "not started"
				continue
			}
			select {
			case <-v.Exited():
				resp.VMStatus[vm.Name] = "exited"
				continue
			default:
			}
			st, err := v.Status(ctx)
			if err != nil {
				resp.VMStatus[vm.Name] = "unknown: " + err.Error()
				continue
			}
			resp.VMStatus[vm.Name] = st.Status
		}
		resp.Links = l.LinkStats()
		return nil
	case "nic-add":
		n, err := l.AddNIC(ctx, req.VM, req.Network, req.Queues, req.MAC)
		if err != nil {
			return err
		}
		resp.NIC = &n
		return nil
	case "nic-del":
		return l.DelNIC(ctx, req.VM, req.NIC)
	case "nic-set":
		for k := range req.Impair {
			if k != "" {
				return fmt.Errorf("lab %s: vm %s %s: a NIC's impairment has one direction (to the guest), not %q", l.cfg.Name, req.VM, req.NIC, k)
			}
		}
		im, err := l.SetNICImpairment(req.VM, req.NIC, req.Impair[""])
		if err != nil {
			return err
		}
		resp.NICImpairment = im.String()
		return nil
	case "link-set":
		if err := l.SetLinkImpairments(req.Link, req.Impair); err != nil {
			return err
		}
		resp.Links = l.LinkStats()
		return nil
	}
	return fmt.Errorf("unknown control op %q", req.Op)
}

// Call sends one request to the supervisor of the lab whose state is in
// dir.
func Call(ctx context.Context, dir string, req Request) (Response, error) {
	var resp Response
	var d net.Dialer
	c, err := d.DialContext(ctx, "unix", filepath.Join(dir, controlSocket))
	if err != nil {
		return resp, fmt.Errorf("lab supervisor at %s: %w (is the lab up? see `vmnet status`)", dir, err)
	}
	defer c.Close()
	if dl, ok := ctx.Deadline(); ok {
		c.SetDeadline(dl)
	}
	if err := json.NewEncoder(c).Encode(req); err != nil {
		return resp, err
	}
	if err := json.NewDecoder(io.LimitReader(c, maxControlMessage)).Decode(&resp); err != nil {
		return resp, fmt.Errorf("lab supervisor at %s: %w", dir, err)
	}
	if resp.Error != "" {
		return resp, errors.New(resp.Error)
	}
	return resp, nil
}
