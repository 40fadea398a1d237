package guest

import (
	"bufio"
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// fakeAgent answers like qemu-guest-agent, after writing what a channel
// can hold from an earlier client (an answer nobody read). The real agent
// is exercised by the guest tests in internal/lab; this one produces the
// stale data a real guest produces only by chance.
func fakeAgent(t *testing.T) string {
	sock := filepath.Join(t.TempDir(), "qga.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				fmt.Fprintf(c, "{\"return\": {\"pid\": 99}}\n{\"return\": 12345}\n")
				r := bufio.NewReader(c)
				files := map[int][]byte{}
				for {
					line, err := r.ReadBytes('\n')
					if err != nil {
						return
					}
					var req struct {
						Execute   string         `json:"execute"`
						Arguments map[string]any `json:"arguments"`
					}
					if json.Unmarshal(line, &req) != nil {
						continue
					}
					ret := func(v any) { b, _ := json.Marshal(map[string]any{"return": v}); c.Write(append(b, '\n')) }
					switch req.Execute {
					case "guest-sync-delimited":
						c.Write([]byte{0xff})
						ret(req.Arguments["id"])
					case "guest-ping":
						ret(map[string]any{})
					case "guest-exec":
						ret(map[string]any{"pid": 7})
					case "guest-exec-status":
						ret(map[string]any{"exited": true, "exitcode": 3, "out-data": base64.StdEncoding.EncodeToString([]byte("out")), "err-data": base64.StdEncoding.EncodeToString([]byte("err"))})
					case "guest-file-open":
						ret(1)
					case "guest-file-write":
						b, _ := base64.StdEncoding.DecodeString(req.Arguments["buf-b64"].(string))
						files[1] = append(files[1], b...)
						ret(map[string]any{"count": len(b), "eof": false})
					case "guest-file-close":
						if string(files[1]) != "hello" {
							c.Write([]byte(`{"error": {"class": "GenericError", "desc": "wrong content"}}` + "\n"))
							continue
						}
						ret(map[string]any{})
					default:
						c.Write([]byte(`{"error": {"class": "CommandNotFound", "desc": "The command ` + req.Execute + ` has not been found"}}` + "\n"))
					}
				}
			}()
		}
	}()
	return sock
}

// TestAgentCommands: answers left in the channel are skipped (the sync
// id), typed results decode, and agent errors come back as AgentError.
func TestAgentCommands(t *testing.T) {
	a := &Agent{Path: fakeAgent(t), Name: "v"}
	defer a.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := a.WaitReady(ctx, time.Second); err != nil {
		t.Fatal(err)
	}
	st, err := a.Run(ctx, "exit 3")
	if err != nil {
		t.Fatal(err)
	}
	if st.ExitCode != 3 || string(st.Stdout) != "out" || string(st.Stderr) != "err" {
		t.Errorf("run: %+v", st)
	}
	if err := a.WriteFile(ctx, "/tmp/x", []byte("hello")); err != nil {
		t.Error(err)
	}
	var ae *AgentError
	if err := a.call(ctx, "guest-nothing", nil, nil); !errors.As(err, &ae) || ae.Class != "CommandNotFound" {
		t.Errorf("unknown command: %v", err)
	}
	// After an agent error the connection is still in step.
	if err := a.Ping(ctx); err != nil {
		t.Error(err)
	}
}

// TestAgentNotThere: no socket gives an error naming the VM; a socket
// nobody answers on runs into the deadline.
func TestAgentNotThere(t *testing.T) {
	a := &Agent{Path: filepath.Join(t.TempDir(), "none.sock"), Name: "v"}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if err := a.Ping(ctx); err == nil || !containsAll(err.Error(), "vm v", "guest agent") {
		t.Errorf("ping without socket: %v", err)
	}
	sock := filepath.Join(t.TempDir(), "mute.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	a = &Agent{Path: sock, Name: "v"}
	defer a.Close()
	start := time.Now()
	ctx2, cancel2 := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel2()
	if err := a.WaitReady(ctx2, 200*time.Millisecond); err == nil || time.Since(start) > 3*time.Second {
		t.Errorf("mute agent: %v after %v", err, time.Since(start))
	}
}

func containsAll(s string, subs ...string) bool {
	for _, x := range subs {
		if !contains(s, x) {
			return false
		}
	}
	return true
}

func contains(s, sub string) bool { return strings.Contains(s, sub) }

// TestAgentAnswerBounded: a guest that answers with an endless line (no
// newline) gets an error once the answer passes the cap; vmnet, as root,
// does not buffer what the guest sends without limit.
func TestAgentAnswerBounded(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "flood.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		c.Write([]byte{0xff})
		junk := bytes.Repeat([]byte("a"), 1<<20)
		for {
			if _, err := c.Write(junk); err != nil {
				return
			}
		}
	}()
	a := &Agent{Path: sock, Name: "v"}
	defer a.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if err := a.Ping(ctx); !errors.Is(err, errAnswerTooLong) {
		t.Fatalf("ping of a flooding guest: %v, want the answer refused as too long", err)
	}
}
