package link

import (
	"crypto/cipher"
	"crypto/rand"
	"crypto/subtle"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"time"

	"golang.org/x/crypto/chacha20"
	"golang.org/x/crypto/chacha20poly1305"
	"golang.org/x/sys/unix"
)

// The encrypted tunnel (udp:...,key=FILE). Every datagram is
//
//	magic 0xff 'v' 'm' 0x01 | session (16) | counter (8, big endian) | sealed vnet header + frame | tag (16)
//
// sealed with XChaCha20-Poly1305 under the pre-shared key, with the
// 24-byte nonce session||counter and the 28 bytes in front as additional
// data. The first byte is never a valid vnet header flags byte, so a
// cleartext endpoint drops these datagrams as invalid instead of
// forwarding them.
//
// Nonces never repeat under one key: each endpoint draws a new session
// when it opens (8 bytes of wall-clock nanoseconds, then 8 random bytes),
// and counts its datagrams from 0 within the session. Two sessions share
// an id only if they start in the same nanosecond and draw the same 64
// random bits. Because the session is the first 16 bytes of an XChaCha20
// nonce, a sender derives its session's ChaCha20 key once
// (HChaCha20(key, session)) and seals each datagram with plain
// ChaCha20-Poly1305 and the counter; the result is standard
// XChaCha20-Poly1305.
//
// The receiver follows one peer session at a time, with a replay window
// over its counters (replayLimit datagrams behind the newest accepted one,
// as IPsec and WireGuard keep). It moves to another session only when a
// datagram of it authenticates and its start time is later than the
// current one's: a peer that restarts is followed at once, and a recorded
// older session replayed later is refused. Datagrams that fail
// authentication count as auth drops; seen, too old, older-session and
// reflected ones (this endpoint's own session) as replay drops.
//
// Limits, by design of a pre-shared key without a handshake: a receiver
// that restarts accepts a recorded older session of its peer until the
// peer's current session reaches it (then it moves on and never back);
// one key serves both directions, so an endpoint's datagrams from an
// earlier run, sent back to it, authenticate (its current run's do not);
// a sender whose wall clock stepped back behind its previous session's
// start is refused until the receiver restarts. Sizes and timing of
// datagrams are visible, and the path can drop or delay them.
const (
	sealMagic    = "\xffvm\x01"
	sealHdrLen   = len(sealMagic) + 16 + 8
	sealTagLen   = chacha20poly1305.Overhead
	sealOverhead = sealHdrLen + sealTagLen
	// KeySize is the length of a tunnel key file: 32 random bytes.
	KeySize = chacha20poly1305.KeySize
)

// Sizes a pump sees in place of a datagram's length when the endpoint
// dropped it (see pump.handle).
const (
	sizeAuthFailed = -1
	sizeReplayed   = -2
)

// loadKey reads a tunnel key file: exactly KeySize raw bytes, a regular
// file owned by the user vmnet runs as, readable by nobody else. Make one
// with `(umask 077; head -c 32 /dev/urandom > tunnel.key)` and copy it to
// the other end with scp.
func loadKey(path string) ([KeySize]byte, error) {
	var key [KeySize]byte
	f, err := os.OpenFile(path, os.O_RDONLY|unix.O_NOFOLLOW|unix.O_NONBLOCK, 0)
	if err != nil {
		if errors.Is(err, unix.ELOOP) {
			return key, fmt.Errorf("key file %s is a symbolic link: name the file itself", path)
		}
		return key, fmt.Errorf("key file: %w", err)
	}
	defer f.Close()
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		return key, fmt.Errorf("key file %s: %w", path, err)
	}
	switch {
	case st.Mode&unix.S_IFMT != unix.S_IFREG:
		return key, fmt.Errorf("key file %s is not a regular file", path)
	case int(st.Uid) != os.Geteuid():
		return key, fmt.Errorf("key file %s belongs to uid %d, not to the user vmnet runs as (uid %d): chown it, or make a new key", path, st.Uid, os.Geteuid())
	case st.Mode&0o077 != 0:
		return key, fmt.Errorf("key file %s is readable or writable by group or others (mode %04o): run `chmod 600 %s`, and make a new key if others may have read it", path, st.Mode&0o7777, path)
	case st.Size != KeySize:
		return key, fmt.Errorf("key file %s holds %d bytes, want exactly %d random bytes: make one with `(umask 077; head -c %d /dev/urandom > %s)`", path, st.Size, KeySize, KeySize, path)
	}
	if _, err := io.ReadFull(f, key[:]); err != nil {
		return key, fmt.Errorf("key file %s: %w", path, err)
	}
	if printable(key[:]) {
		// 32 random bytes are all printable with a chance of 1e-14: this
		// is a password or hex text, with far less than 256 bits in it.
		return key, fmt.Errorf("key file %s holds text, not %d random bytes: make a key with `(umask 077; head -c %d /dev/urandom > %s)`", path, KeySize, KeySize, path)
	}
	return key, nil
}

func printable(b []byte) bool {
	for _, c := range b {
		if c < 0x20 || c > 0x7e {
			if c != '\n' && c != '\r' && c != '\t' {
				return false
			}
		}
	}
	return true
}

// sessionID is a sender's session: start time (unix nanoseconds, big
// endian) then 8 random bytes.
type sessionID [16]byte

func newSessionID() (sessionID, error) {
	var s sessionID
	binary.BigEndian.PutUint64(s[:8], uint64(time.Now().UnixNano()))
	if _, err := rand.Read(s[8:]); err != nil {
		return s, fmt.Errorf("random session id: %w", err)
	}
	return s, nil
}

func (s sessionID) start() uint64 { return binary.BigEndian.Uint64(s[:8]) }

// sessionAEAD is ChaCha20-Poly1305 under HChaCha20(key, session): with a
// nonce of four zero bytes and the counter it is XChaCha20-Poly1305 with
// the nonce session||counter.
func sessionAEAD(key *[KeySize]byte, s sessionID) (cipher.AEAD, error) {
	sub, err := chacha20.HChaCha20(key[:], s[:])
	if err != nil {
		return nil, err
	}
	return chacha20poly1305.New(sub)
}

// sealer seals outgoing datagrams of one session. Callers serialise.
type sealer struct {
	session sessionID
	aead    cipher.AEAD
	counter uint64
	nonce   [chacha20poly1305.NonceSize]byte
}

func newSealer(key *[KeySize]byte) (*sealer, error) {
	s, err := newSessionID()
	if err != nil {
		return nil, err
	}
	a, err := sessionAEAD(key, s)
	if err != nil {
		return nil, err
	}
	return &sealer{session: s, aead: a}, nil
}

// seal encrypts b[sealHdrLen:len(b)] in place, writes the header into
// b[:sealHdrLen] and the tag behind, and returns the datagram
// b[:len(b)+sealTagLen]. b must have sealTagLen bytes of capacity spare.
func (s *sealer) seal(b []byte) []byte {
	h := b[:sealHdrLen]
	copy(h, sealMagic)
	copy(h[4:], s.session[:])
	binary.BigEndian.PutUint64(h[20:], s.counter)
	binary.BigEndian.PutUint64(s.nonce[4:], s.counter)
	s.counter++
	pt := b[sealHdrLen:]
	s.aead.Seal(pt[:0], s.nonce[:], pt, h)
	return b[:len(b)+sealTagLen]
}

// opener checks and opens datagrams from the peer. One goroutine uses it.
type opener struct {
	key   *[KeySize]byte
	x     cipher.AEAD // XChaCha20-Poly1305 under key: datagrams of a session not yet followed
	own   sessionID   // this endpoint's sending session: its datagrams reflected back are refused
	peer  sessionID
	aead  cipher.AEAD // of peer; nil until a datagram authenticated
	win   replayWindow
	nonce [chacha20poly1305.NonceSize]byte
	xnon  [chacha20poly1305.NonceSizeX]byte
}

func newOpener(key *[KeySize]byte, own sessionID) (*opener, error) {
	x, err := chacha20poly1305.NewX(key[:])
	if err != nil {
		return nil, err
	}
	return &opener{key: key, x: x, own: own}, nil
}

// open authenticates and decrypts the datagram d in place. It returns the
// length of the plaintext (vnet header and frame), which starts at
// d[sealHdrLen:], or sizeAuthFailed or sizeReplayed.
func (o *opener) open(d []byte) int {
	if len(d) < sealOverhead || string(d[:4]) != sealMagic {
		return sizeAuthFailed
	}
	h, ct := d[:sealHdrLen], d[sealHdrLen:]
	var s sessionID
	copy(s[:], h[4:20])
	n := binary.BigEndian.Uint64(h[20:])
	if o.aead != nil && s == o.peer {
		if !o.win.check(n) {
			return sizeReplayed
		}
		binary.BigEndian.PutUint64(o.nonce[4:], n)
		if _, err := o.aead.Open(ct[:0], o.nonce[:], ct, h); err != nil {
			return sizeAuthFailed
		}
		o.win.accept(n)
		return len(ct) - sealTagLen
	}
	if subtle.ConstantTimeCompare(s[:], o.own[:]) == 1 {
		return sizeReplayed // our own datagram, sent back to us
	}
	if o.aead != nil && s.start() <= o.peer.start() {
		return sizeReplayed // an older session of the peer
	}
	copy(o.xnon[:16], s[:])
	binary.BigEndian.PutUint64(o.xnon[16:], n)
	if _, err := o.x.Open(ct[:0], o.xnon[:], ct, h); err != nil {
		return sizeAuthFailed
	}
	// A new session of the peer (it restarted, or this is the first):
	// follow it. This allocates, once per session.
	a, err := sessionAEAD(o.key, s)
	if err != nil {
		return sizeAuthFailed
	}
	o.peer, o.aead = s, a
	o.win = replayWindow{}
	o.win.accept(n)
	return len(ct) - sealTagLen
}

// replayWindow remembers which counters of a session were accepted:
// WireGuard's (and RFC 6479's) ring of bitmap words. A counter is new if it
// is above the newest accepted one, or less than replayLimit behind it
// and not seen.
type replayWindow struct {
	last uint64 // newest accepted counter
	ring [replayWords]uint64
}

const (
	replayWords = 64
	replayLimit = (replayWords - 1) * 64 // 4032 datagrams
)

// check reports whether counter n may be accepted; it changes nothing, so
// a datagram that then fails authentication leaves no trace.
func (w *replayWindow) check(n uint64) bool {
	if n > w.last {
		return true
	}
	if w.last-n >= replayLimit {
		return false
	}
	return w.ring[(n/64)%replayWords]&(1<<(n%64)) == 0
}

// accept records n, which check allowed and which authenticated.
func (w *replayWindow) accept(n uint64) {
	if n > w.last {
		cur, idx := w.last/64, n/64
		for i, d := uint64(1), min(idx-cur, replayWords); i <= d; i++ {
			w.ring[(cur+i)%replayWords] = 0
		}
		w.last = n
	}
	w.ring[(n/64)%replayWords] |= 1 << (n % 64)
}

// sealedConn is the encrypted tunnel queue: it seals what the link writes
// and opens what it reads, in the link's buffers (Headroom in front holds
// the header, Tailroom behind the tag), around a udpConn.
type sealedConn struct {
	c *udpConn

	wmu  sync.Mutex
	tx   *sealer
	wire [maxBatch][]byte
	// A send that fails part way leaves later datagrams of its batch
	// sealed but unsent; the link hands them back next (after dropping the
	// one that failed), and they must not be sealed twice.
	presealed   int
	presealedAt *byte

	rx *opener
}

func newSealedConn(c *udpConn, key *[KeySize]byte) (*sealedConn, error) {
	tx, err := newSealer(key)
	if err != nil {
		return nil, err
	}
	rx, err := newOpener(key, tx.session)
	if err != nil {
		return nil, err
	}
	return &sealedConn{c: c, tx: tx, rx: rx}, nil
}

func (s *sealedConn) setDeadline(t time.Time) error { return s.c.setDeadline(t) }

func (s *sealedConn) read(bufs [][]byte, off int, sizes []int) (int, error) {
	at := off - sealHdrLen
	n, err := s.c.read(bufs, at, sizes)
	for i := 0; i < n; i++ {
		room := len(bufs[i]) - at
		if sizes[i] > room {
			sizes[i] = len(bufs[i]) - off + 1 // truncated: the pump counts it
			continue
		}
		sizes[i] = s.rx.open(bufs[i][at : at+sizes[i]])
	}
	return n, err
}

func (s *sealedConn) write(bufs [][]byte, off int) (int, error) {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	at := off - sealHdrLen
	done := 0
	for done < len(bufs) {
		k := min(len(bufs)-done, maxBatch)
		for j := 0; j < k; j++ {
			if b := bufs[done+j]; cap(b)-len(b) < sealTagLen || len(b) < off {
				// Not a link buffer (no tail room for the tag): refuse
				// it rather than let the AEAD allocate a copy.
				if j == 0 {
					s.presealed = 0
					return done, fmt.Errorf("%s: frame buffer without room for the tag", s.c.name)
				}
				k = j
				break
			}
		}
		pre := 0
		if s.presealed > 0 && &bufs[done][off] == s.presealedAt {
			pre = s.presealed
		}
		for j := 0; j < k; j++ {
			b := bufs[done+j]
			if j < pre {
				s.wire[j] = b[at : len(b)+sealTagLen]
			} else {
				s.wire[j] = s.tx.seal(b[at:])
			}
		}
		s.presealed = 0
		if pre > k && done+k < len(bufs) {
			s.presealed, s.presealedAt = pre-k, &bufs[done+k][off]
		}
		n, err := s.c.write(s.wire[:k], 0)
		clear(s.wire[:k])
		if err != nil {
			if rest := max(k, pre) - n - 1; rest > 0 && done+n+1 < len(bufs) {
				s.presealed, s.presealedAt = rest, &bufs[done+n+1][off]
			}
			return done + n, err
		}
		done += k
	}
	return done, nil
}
