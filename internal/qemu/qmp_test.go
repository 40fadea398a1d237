package qemu

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"path/filepath"
	"testing"
	"time"
)

// fakeQMP serves one connection: the greeting, then for every command the
// lines answer returns. QEMU cannot be made to send a stale reply on
// demand, so this one error path uses a stand-in.
func fakeQMP(t *testing.T, answer func(id json.RawMessage, execute string) []string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "qmp.sock")
	l, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				fmt.Fprintln(c, `{"QMP": {"version": {"qemu": {"micro": 0, "minor": 2, "major": 7}}, "capabilities": ["oob"]}}`)
				dec := json.NewDecoder(bufio.NewReader(c))
				for {
					var cmd struct {
						Execute string          `json:"execute"`
						ID      json.RawMessage `json:"id"`
					}
					if dec.Decode(&cmd) != nil {
						return
					}
					for _, line := range answer(cmd.ID, cmd.Execute) {
						fmt.Fprintln(c, line)
					}
				}
			}()
		}
	}()
	return path
}

func TestQMPMatchesRepliesByID(t *testing.T) {
	path := fakeQMP(t, func(id json.RawMessage, execute string) []string {
		if execute == "qmp_capabilities" {
			return []string{fmt.Sprintf(`{"return": {}, "id": %s}`, id)}
		}
		// A stale reply of an earlier command, one without id, an event,
		// then the real reply.
		return []string{
			`{"return": {"status": "stale", "running": false}, "id": 999999}`,
			`{"return": {"status": "no-id", "running": false}}`,
			`{"event": "STOP", "data": {}, "timestamp": {"seconds": 1, "microseconds": 2}}`,
			fmt.Sprintf(`{"return": {"status": "running", "running": true}, "id": %s}`, id),
		}
	})
	m := newMonitor(path, make(chan struct{}))
	defer m.close()
	stops, unsub := m.subscribe(func(ev Event) bool { return ev.Event == "STOP" })
	defer unsub()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for i := 0; i < 3; i++ {
		var st Status
		if err := m.runInto(ctx, "query-status", nil, &st); err != nil {
			t.Fatal(err)
		}
		if st.Status != "running" {
			t.Fatalf("call %d: got the reply %+v, want the one with the command's id", i, st)
		}
		select {
		case ev := <-stops:
			if ev.Timestamp.Microseconds != 2 {
				t.Errorf("event %+v", ev)
			}
		case <-time.After(2 * time.Second):
			t.Fatal("the event did not reach the subscriber")
		}
	}
}

func TestQMPErrorReplyAndTimeout(t *testing.T) {
	path := fakeQMP(t, func(id json.RawMessage, execute string) []string {
		switch execute {
		case "qmp_capabilities":
			return []string{fmt.Sprintf(`{"return": {}, "id": %s}`, id)}
		case "bad":
			return []string{fmt.Sprintf(`{"error": {"class": "GenericError", "desc": "no such thing"}, "id": %s}`, id)}
		case "slow":
			return nil // never answers
		}
		return []string{fmt.Sprintf(`{"return": {"status": "running", "running": true}, "id": %s}`, id)}
	})
	m := newMonitor(path, make(chan struct{}))
	defer m.close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := m.run(ctx, "bad", nil, nil); err == nil || err.Error() != "qmp bad: no such thing" {
		t.Errorf("error reply: %v", err)
	}
	sctx, scancel := context.WithTimeout(ctx, 100*time.Millisecond)
	_, err := m.run(sctx, "slow", nil, nil)
	scancel()
	if err == nil {
		t.Fatal("a command without reply returned no error")
	}
	var st Status
	if err := m.runInto(ctx, "query-status", nil, &st); err != nil || st.Status != "running" {
		t.Fatalf("after a timeout: %+v %v", st, err)
	}
}
