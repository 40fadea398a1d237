package link

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/binary"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/crypto/chacha20poly1305"
	"golang.org/x/sys/unix"

	"github.com/vmnet/vmnet/internal/testenv"
	"github.com/vmnet/vmnet/vmconfig"
	"github.com/vmnet/vmnet/vnethdr"
)

// writeKey makes a key file as the docs say: 32 random bytes, mode 0600.
func writeKey(t testing.TB) string {
	t.Helper()
	k := make([]byte, KeySize)
	rand.Read(k)
	p := filepath.Join(t.TempDir(), "tunnel.key")
	if err := os.WriteFile(p, k, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestTunnelKey (issue 10, scenario 13): the TCP transfer and UDP echoes
// of TestTransfer pass through an encrypted tunnel between two
// namespaces' taps, super-frames whole, and nothing is dropped for
// authentication or replay.
func TestTunnelKey(t *testing.T) {
	key := writeKey(t)
	w := newWorld(t, true)
	ua := w.open("udp:127.0.0.1:7001,remote=127.0.0.1:7002,key=" + key)
	if !ua.Info().Encrypted {
		t.Errorf("endpoint %s: Info says not encrypted", ua)
	}
	l1, err := New(w.open("tap:tA"), ua, Options{})
	w.must(err)
	l2, err := New(w.open("udp:127.0.0.1:7002,remote=127.0.0.1:7001,key="+key), w.open("tap:tB"), Options{})
	w.must(err)
	w.plug("tA", "brA")
	w.plug("tB", "brB")
	w.run(l1)
	w.run(l2)
	w.tcpTransfer(transferSize)
	w.udpEcho()
	s1, s2 := l1.Stats(), l2.Stats()
	t.Logf("stats:\n%s\n%s", s1, s2)
	if s1.AtoB.SuperFrames == 0 || s2.AtoB.SuperFrames == 0 {
		t.Errorf("super-frames should cross the tunnel whole: sent %d, received %d", s1.AtoB.SuperFrames, s2.AtoB.SuperFrames)
	}
	for _, d := range []Drops{s1.BtoA.Drops, s2.AtoB.Drops} {
		if d.Auth+d.Replay+d.Invalid+d.Truncated != 0 {
			t.Errorf("tunnel receive drops: %+v", d)
		}
	}
}

// TestTunnelWrongKey: ends with different keys pass nothing; every
// datagram is dropped and counted as failing authentication. A cleartext
// end drops the encrypted datagrams as invalid instead of forwarding them.
func TestTunnelWrongKey(t *testing.T) {
	for _, tc := range []struct {
		name  string
		keyB  string
		check func(d Drops) bool
	}{
		{"other-key", ",key=" + writeKey(t), func(d Drops) bool { return d.Auth > 0 && d.Auth == d.Total() }},
		{"cleartext", "", func(d Drops) bool { return d.Invalid > 0 && d.Invalid == d.Total() }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w := newWorld(t, true)
			l1, err := New(w.open("tap:tA"), w.open("udp:127.0.0.1:7001,remote=127.0.0.1:7002,key="+writeKey(t)), Options{})
			w.must(err)
			l2, err := New(w.open("udp:127.0.0.1:7002,remote=127.0.0.1:7001"+tc.keyB), w.open("tap:tB"), Options{})
			w.must(err)
			w.plug("tA", "brA")
			w.plug("tB", "brB")
			w.run(l1)
			w.run(l2)
			testenv.Do(t, w.A, func() error {
				c, err := net.Dial("udp4", w.ipB.String()+":5003")
				if err != nil {
					return err
				}
				defer c.Close()
				for range 10 {
					c.Write([]byte("must not arrive"))
					time.Sleep(20 * time.Millisecond)
				}
				return nil
			})
			// Wait until the receiving end has dropped something: a
			// fixed 200 ms was not always enough for A's ARP request to
			// pass both links on a loaded machine. Nothing can pass with
			// the wrong key, so what arrived by then is all there is to
			// judge.
			var s1, s2 Stats
			for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(20 * time.Millisecond) {
				s1, s2 = l1.Stats(), l2.Stats()
				if s1.AtoB.TxFrames > 0 && s2.AtoB.Drops.Total() > 0 || time.Now().After(deadline) {
					break
				}
			}
			t.Logf("stats:\n%s\n%s", s1, s2)
			if s1.AtoB.TxFrames == 0 {
				t.Fatalf("nothing entered the tunnel")
			}
			if s2.AtoB.TxFrames != 0 || !tc.check(s2.AtoB.Drops) {
				t.Errorf("receiving end wrote %d frames to tB, drops %+v; want none written, all dropped as %s", s2.AtoB.TxFrames, s2.AtoB.Drops, tc.name)
			}
		})
	}
}

// TestTunnelReplay: a relay in the middle (a plain UDP socket that the
// sending end's remote points at, and that the receiving end takes
// datagrams from) captures one datagram and delivers it twice: the first
// copy passes, the second is dropped and counted as a replay. Copies with
// another counter or a flipped bit fail authentication, and the captured
// bytes do not contain the frame in the clear.
func TestTunnelReplay(t *testing.T) {
	key := writeKey(t)
	w := newWorld(t, true)
	var relay *net.UDPConn
	testenv.Do(t, w.L, func() (err error) {
		relay, err = net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 7003})
		return err
	})
	defer relay.Close()
	a := w.open("udp:127.0.0.1:7001,remote=127.0.0.1:7003,key=" + key)
	defer a.Close()
	l, err := New(w.open("udp:127.0.0.1:7002,remote=127.0.0.1:7003,key="+key), w.open("tap:tB"), Options{})
	w.must(err)
	w.plug("tB", "brB")
	w.run(l)

	frame := append([]byte(nil), lldpFrame...)
	copy(frame[40:], "vmnet replay test frame")
	buf := make([]byte, Headroom+len(frame)+Tailroom)
	copy(buf[Headroom:], frame)
	if n, err := a.queues[0].write([][]byte{buf[:Headroom+len(frame)]}, Headroom-vnethdr.HdrLen); n != 1 || err != nil {
		t.Fatalf("send through the tunnel: %d, %v", n, err)
	}
	// The relay also gets what tB's kernel sends through the other
	// endpoint: keep only the datagram from the sending end.
	relay.SetReadDeadline(time.Now().Add(5 * time.Second))
	d := make([]byte, 70000)
	var n int
	for {
		var from *net.UDPAddr
		n, from, err = relay.ReadFromUDP(d)
		if err != nil {
			t.Fatalf("relay: %v", err)
		}
		if from.Port == 7001 {
			break
		}
	}
	d = d[:n]
	if n != len(frame)+vnethdr.HdrLen+sealOverhead || bytes.Contains(d, []byte("vmnet replay test frame")) {
		t.Fatalf("captured datagram of %d bytes (frame %d): not sealed as documented", n, len(frame))
	}
	to := &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 7002}
	expect := func(what string, tx, replay, auth uint64) {
		t.Helper()
		var s DirStats
		for deadline := time.Now().Add(3 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
			if s = l.Stats().AtoB; s.TxFrames == tx && s.Drops.Replay == replay && s.Drops.Auth == auth {
				return
			}
		}
		t.Fatalf("after %s: %d frames to tB, %d replay and %d auth drops; want %d, %d, %d", what, s.TxFrames, s.Drops.Replay, s.Drops.Auth, tx, replay, auth)
	}
	send := func(b []byte) {
		t.Helper()
		if _, err := relay.WriteToUDP(b, to); err != nil {
			t.Fatal(err)
		}
	}
	send(d)
	expect("the first copy", 1, 0, 0)
	send(d)
	expect("the second copy", 1, 1, 0)
	// Altered copies carry a counter not seen yet (a seen one is refused
	// as a replay before any cryptography).
	bad := append([]byte(nil), d...)
	binary.BigEndian.PutUint64(bad[20:], 7) // another counter: the tag no longer matches
	send(bad)
	expect("a copy with another counter", 1, 1, 1)
	binary.BigEndian.PutUint64(bad[20:], 0)
	bad[len(bad)-20] ^= 1
	send(bad)
	expect("a copy with a flipped bit", 1, 2, 1)
	binary.BigEndian.PutUint64(bad[20:], 8)
	send(bad)
	expect("a copy with a flipped bit and another counter", 1, 2, 2)
}

// TestKeyFile: loadKey takes a 32-byte file of mode 0600 and refuses the
// rest with a message that names the file and says what to do.
func TestKeyFile(t *testing.T) {
	dir := t.TempDir()
	good := writeKey(t)
	mk := func(name string, data []byte, mode os.FileMode) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, data, 0o600); err != nil {
			t.Fatal(err)
		}
		os.Chmod(p, mode)
		return p
	}
	rnd := make([]byte, 64)
	rand.Read(rnd)
	rnd[0] = 0 // not text
	link := filepath.Join(dir, "link.key")
	os.Symlink(good, link)
	for _, tc := range []struct {
		path string
		err  string // "" = must load
	}{
		{good, ""},
		{mk("group.key", rnd[:32], 0o640), "readable or writable by group or others (mode 0640): run `chmod 600"},
		{mk("world.key", rnd[:32], 0o604), "(mode 0604)"},
		{mk("short.key", rnd[:16], 0o600), "holds 16 bytes, want exactly 32 random bytes: make one with `(umask 077; head -c 32 /dev/urandom >"},
		{mk("long.key", rnd[:33], 0o600), "holds 33 bytes"},
		{mk("text.key", []byte("correct horse battery staple 123"), 0o600), "holds text, not 32 random bytes"},
		{link, "is a symbolic link"},
		{dir, "is not a regular file"},
		{filepath.Join(dir, "missing.key"), "no such file"},
	} {
		k, err := loadKey(tc.path)
		switch {
		case tc.err == "" && err != nil:
			t.Errorf("loadKey(%s): %v", tc.path, err)
		case tc.err == "":
			want, _ := os.ReadFile(tc.path)
			if !bytes.Equal(k[:], want) {
				t.Errorf("loadKey(%s) returned other bytes than the file's", tc.path)
			}
		case err == nil || !strings.Contains(err.Error(), tc.err) || !strings.Contains(err.Error(), tc.path):
			t.Errorf("loadKey(%s) = %v; want an error naming the file and containing %q", tc.path, err, tc.err)
		}
	}
	// Open names the endpoint in front of loadKey's message.
	ep, err := vmconfig.ParseEndpoint("udp:127.0.0.1:7011,remote=127.0.0.1:7012,key=" + filepath.Join(dir, "group.key"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Open(context.Background(), ep, OpenOptions{}); err == nil || !strings.Contains(err.Error(), "link endpoint "+ep.String()) {
		t.Errorf("Open with a group-readable key: %v; want an error naming the endpoint", err)
	}
}

// sealPair makes a sealer and the opener of the other end for one key.
func sealPair(tb testing.TB) (*sealer, *opener) {
	var key [KeySize]byte
	rand.Read(key[:])
	s, err := newSealer(&key)
	if err != nil {
		tb.Fatal(err)
	}
	own, _ := newSessionID()
	o, err := newOpener(&key, own)
	if err != nil {
		tb.Fatal(err)
	}
	return s, o
}

// TestSealOpen: datagrams open to what was sealed, in any order within the
// window; duplicates, counters too far behind, older sessions and the
// receiver's own session are replays; anything altered fails; and neither
// side allocates per datagram once the peer's session is known.
func TestSealOpen(t *testing.T) {
	s, o := sealPair(t)
	mk := func(payload string) []byte {
		b := make([]byte, sealHdrLen+len(payload), sealHdrLen+len(payload)+sealTagLen)
		copy(b[sealHdrLen:], payload)
		return s.seal(b)
	}
	var ds [][]byte
	for i := range 5000 {
		ds = append(ds, mk(fmt.Sprintf("datagram %d", i)))
	}
	openAs := func(d []byte) (int, string) {
		c := append([]byte(nil), d...)
		n := o.open(c)
		if n < 0 {
			return n, ""
		}
		return n, string(c[sealHdrLen : sealHdrLen+n])
	}
	for _, i := range []int{0, 2, 1, 4999, 1000, 999, 968} { // 4999-968 = 4031: just inside the window
		if n, got := openAs(ds[i]); got != fmt.Sprintf("datagram %d", i) {
			t.Fatalf("datagram %d opened as %d, %q", i, n, got)
		}
	}
	for _, i := range []int{0, 2, 4999, 967, 3} { // seen, seen, seen, 4032 behind, too far behind
		if n, _ := openAs(ds[i]); n != sizeReplayed {
			t.Errorf("datagram %d again or too old: opened as %d, want a replay", i, n)
		}
	}
	bad := append([]byte(nil), ds[4000]...)
	bad[sealHdrLen] ^= 0x80
	if n, _ := openAs(bad); n != sizeAuthFailed {
		t.Errorf("altered datagram: %d, want an authentication failure", n)
	}
	if n, _ := openAs(ds[4000]); n < 0 {
		t.Errorf("datagram 4000 after a failed forgery of it: %d; a failure must not mark the counter", n)
	}
	for _, cut := range []int{0, 3, sealHdrLen, sealOverhead - 1} {
		if n, _ := openAs(ds[4001][:cut]); n != sizeAuthFailed {
			t.Errorf("datagram cut to %d bytes: %d, want an authentication failure", cut, n)
		}
	}
	// The peer restarts: a later session is followed, the old one refused.
	old := ds[4002]
	time.Sleep(time.Millisecond)
	s2, _ := newSealer(o.key)
	b := make([]byte, sealHdrLen+3, sealHdrLen+3+sealTagLen)
	copy(b[sealHdrLen:], "new")
	if n, got := openAs(s2.seal(b)); got != "new" {
		t.Fatalf("first datagram of the restarted peer: %d %q", n, got)
	}
	if n, _ := openAs(old); n != sizeReplayed {
		t.Errorf("datagram of the older session after the restart: %d, want a replay", n)
	}
	// Reflection: the opener's own session.
	own := &sealer{session: o.own}
	own.aead, _ = sessionAEAD(o.key, o.own)
	b = make([]byte, sealHdrLen+3, sealHdrLen+3+sealTagLen)
	if n, _ := openAs(own.seal(b)); n != sizeReplayed {
		t.Errorf("own datagram reflected: %d, want a replay", n)
	}
	// Interoperability: the datagram is standard XChaCha20-Poly1305.
	x := newXOpen(t, o.key)
	d := append([]byte(nil), ds[10]...)
	if pt, err := x(d); err != nil || string(pt) != "datagram 10" {
		t.Errorf("XChaCha20-Poly1305 open: %q, %v", pt, err)
	}

	buf := make([]byte, sealHdrLen+1500, sealHdrLen+1500+sealTagLen)
	wire := s2.seal(buf)
	if a := testing.AllocsPerRun(100, func() {
		wire = s2.seal(buf)
		if o.open(wire) < 0 {
			t.Fatal("open failed")
		}
	}); a != 0 {
		t.Errorf("%.1f allocations per seal and open", a)
	}
	// A forged datagram of an unknown, later session goes through the
	// XChaCha20-Poly1305 check, which fails.
	forged := append([]byte(nil), wire...)
	binary.BigEndian.PutUint64(forged[4:], uint64(time.Now().Add(time.Hour).UnixNano()))
	if n := o.open(append([]byte(nil), forged...)); n != sizeAuthFailed {
		t.Errorf("forged datagram of a new session: %d, want an authentication failure", n)
	}
	if a := testing.AllocsPerRun(100, func() { o.open(forged) }); a != 0 {
		t.Errorf("%.1f allocations per forged datagram", a)
	}
}

// newXOpen opens a tunnel datagram with a stock XChaCha20-Poly1305: the
// format is that AEAD with nonce session||counter.
func newXOpen(t *testing.T, key *[KeySize]byte) func(d []byte) ([]byte, error) {
	x, err := chacha20poly1305.NewX(key[:])
	if err != nil {
		t.Fatal(err)
	}
	return func(d []byte) ([]byte, error) {
		pt, err := x.Open(nil, d[4:sealHdrLen], d[sealHdrLen:], d[:sealHdrLen])
		return pt, err
	}
}

// BenchmarkSealOpen measures sealing and opening one datagram in place,
// for an MTU frame and a 64 KB super-frame; the cleartext tunnel does
// neither, see BenchmarkTunnel for the ratio.
func BenchmarkSealOpen(b *testing.B) {
	for _, size := range []int{1500, 65000} {
		b.Run(fmt.Sprint(size), func(b *testing.B) {
			s, o := sealPair(b)
			buf := make([]byte, sealHdrLen+vnethdr.HdrLen+size, sealHdrLen+vnethdr.HdrLen+size+sealTagLen)
			b.SetBytes(int64(size))
			b.ReportAllocs()
			for b.Loop() {
				if o.open(s.seal(buf)) < 0 {
					b.Fatal("open failed")
				}
			}
		})
	}
}

// BenchmarkTunnel sends one frame at a time through a tunnel on loopback
// (write on one endpoint, read on the other, both through the kernel),
// cleartext and with a key, in the same run: the ratio is what the key
// costs per frame.
func BenchmarkTunnel(b *testing.B) {
	testenv.RequireRoot(b)
	key := writeKey(b)
	ns := testenv.NetNS(b)
	testenv.Do(b, ns, func() error { return exec1("ip", "link", "set", "lo", "up") })
	for _, size := range []int{1500, 65000} {
		for _, mode := range []string{"clear", "key"} {
			b.Run(fmt.Sprintf("%s/%d", mode, size), func(b *testing.B) {
				opt := ""
				if mode == "key" {
					opt = ",key=" + key
				}
				var x, y *Endpoint
				testenv.Do(b, ns, func() (err error) {
					ex, _ := vmconfig.ParseEndpoint("udp:127.0.0.1:7021,remote=127.0.0.1:7022" + opt)
					ey, _ := vmconfig.ParseEndpoint("udp:127.0.0.1:7022,remote=127.0.0.1:7021" + opt)
					if x, err = Open(context.Background(), ex, OpenOptions{}); err != nil {
						return err
					}
					y, err = Open(context.Background(), ey, OpenOptions{})
					return err
				})
				defer x.Close()
				defer y.Close()
				off := Headroom - vnethdr.HdrLen
				wbuf := make([]byte, Headroom+size+Tailroom)
				out := [][]byte{wbuf[:Headroom+size]}
				rbufs := [][]byte{make([]byte, Headroom+MaxFrame+Tailroom)}
				sizes := []int{0}
				y.setDeadline(time.Now().Add(time.Minute))
				b.SetBytes(int64(size))
				b.ReportAllocs()
				for b.Loop() {
					if n, err := x.queues[0].write(out, off); n != 1 {
						b.Fatalf("write: %v", err)
					}
					if n, err := y.queues[0].read(rbufs, off, sizes); n != 1 || sizes[0] != vnethdr.HdrLen+size {
						b.Fatalf("read: %d datagrams, size %d: %v", n, sizes[0], err)
					}
				}
			})
		}
	}
}

// TestSealedPartialSend: a send that fails part way (here: the error the
// kernel keeps after an ICMP port unreachable, reported on the next send)
// leaves the rest of the batch sealed but unsent. The link drops the one
// that failed and hands back the rest, which must go out sealed once: a
// second sealing would make the far end "open" them to ciphertext.
func TestSealedPartialSend(t *testing.T) {
	testenv.RequireRoot(t)
	key := writeKey(t)
	ns := testenv.NetNS(t)
	var x, y *Endpoint
	open := func(spec string) *Endpoint {
		var e *Endpoint
		testenv.Do(t, ns, func() (err error) {
			ep, err := vmconfig.ParseEndpoint(spec)
			if err != nil {
				return err
			}
			e, err = Open(context.Background(), ep, OpenOptions{})
			return err
		})
		return e
	}
	testenv.Do(t, ns, func() error { return exec1("ip", "link", "set", "lo", "up") })
	x = open("udp:127.0.0.1:7031,remote=127.0.0.1:7032,key=" + key)
	defer x.Close()
	off := Headroom - vnethdr.HdrLen
	frame := func(i int) []byte {
		b := make([]byte, Headroom+100, Headroom+100+Tailroom)
		copy(b[Headroom:], fmt.Sprintf("frame %d", i))
		return b
	}
	// Nobody listens on 7032 yet: the port unreachable comes back and
	// the socket keeps ECONNREFUSED for the next send.
	if n, err := x.queues[0].write([][]byte{frame(0)}, off); n != 1 || err != nil {
		t.Fatalf("first send: %d, %v", n, err)
	}
	// Wait for that error to be on the socket (poll says POLLERR) rather
	// than for a fixed 100 ms: the ICMP message is made and delivered in
	// softirq work, which a loaded machine can defer.
	waitSocketError(t, x.queues[0].(*sealedConn).c.rc, 20*time.Second)
	y = open("udp:127.0.0.1:7032,remote=127.0.0.1:7031,key=" + key)
	defer y.Close()
	out := [][]byte{frame(1), frame(2), frame(3)}
	n, err := x.queues[0].write(out, off)
	if err == nil {
		t.Fatalf("the kernel reported no pending error (sent %d): the partial send this test needs did not happen", n)
	}
	t.Logf("send after the port unreachable: %d sent, %v", n, err)
	// What the link does: drop out[n], hand back the rest.
	rest := out[n+1:]
	if m, err := x.queues[0].write(rest, off); m != len(rest) || err != nil {
		t.Fatalf("resend of the rest: %d of %d, %v", m, len(rest), err)
	}
	rbufs := [][]byte{make([]byte, Headroom+MaxFrame+Tailroom), make([]byte, Headroom+MaxFrame+Tailroom), make([]byte, Headroom+MaxFrame+Tailroom)}
	sizes := make([]int, 3)
	y.setDeadline(time.Now().Add(2 * time.Second))
	var got []string
	for len(got) < len(rest) {
		k, err := y.queues[0].read(rbufs, off, sizes)
		for i := 0; i < k; i++ {
			if sizes[i] < 0 {
				t.Fatalf("datagram %d: dropped by the receiver (%d)", len(got), sizes[i])
			}
			got = append(got, strings.TrimRight(string(rbufs[i][Headroom:Headroom+sizes[i]-vnethdr.HdrLen]), "\x00"))
		}
		if err != nil {
			t.Fatalf("read after %q: %v", got, err)
		}
	}
	for i, g := range got {
		if want := fmt.Sprintf("frame %d", n+2+i); g != want {
			t.Errorf("datagram %d opened to %q, want %q", i, g, want)
		}
	}
}

// waitSocketError waits until the socket behind rc has a pending error
// (poll reports POLLERR, whatever events were asked for), or fails the
// test after within.
func waitSocketError(t *testing.T, rc syscall.RawConn, within time.Duration) {
	t.Helper()
	var perr error
	var revents int16
	if err := rc.Control(func(fd uintptr) {
		fds := []unix.PollFd{{Fd: int32(fd)}}
		for deadline := time.Now().Add(within); time.Now().Before(deadline); {
			var n int
			if n, perr = unix.Poll(fds, 100); perr == unix.EINTR {
				continue
			} else if perr != nil || n > 0 {
				break
			}
		}
		revents = fds[0].Revents
	}); err != nil {
		t.Fatal(err)
	}
	if perr != nil || revents&unix.POLLERR == 0 {
		t.Fatalf("no error on the socket within %v (poll: events %#x, %v)", within, revents, perr)
	}
}
