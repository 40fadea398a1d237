// Command vmnet-helper runs inside vmnet's test image (/usr/sbin/vmnet-helper,
// built by package images when it builds the image; standard library
// only, so that it builds without the network and from vmnet's embedded
// copy of this source, outside vmnet's module: hence its own small
// rtnetlink code rather than internal/nlbatch). It does the work of
// /init that would otherwise start programs, because under TCG every
// code path a guest runs for the first time is translated anew (the
// kernel's fork and exec paths, ld.so, libc), and every guest restored
// from a snapshot pays that again: about 6.4 k translated blocks for the
// first program a clone starts, 3 k for a second different one.
//
//	vmnet-helper batch FILE
//	    Apply the network set-up lines of FILE over rtnetlink, in order,
//	    each on its own: a failing line does not stop the others. Lines
//	    (the ip batch syntax /init writes):
//	        link set dev IF address MAC | mtu N | up
//	        addr add ADDR/LEN dev IF
//	        route add DEST via GW          (DEST: default or ADDR/LEN)
//	    For each line that failed it prints the error, then
//	    "Command failed FILE:LINE" (as ip -batch does), and exits 1.
//	vmnet-helper serve REQ ANS
//	    Started by /init of a warm guest before its snapshot point: read
//	    requests, one per line, from the FIFO REQ and answer on the FIFO
//	    ANS. A restored guest then starts no program for them:
//	        identity     read the identity from stdin (ttyS1): base64 in
//	                     lines, then "END <sha256 of the text>"; answer
//	                     "OK <text>" or "ERR <why>"
//	        clock SECS   set the wall clock; answer "OK" or "ERR <why>"
//	        batch FILE   as above; answer the output lines, then
//	                     "END <exit status>"
//	        decode F SUM base64-decode the file F.b64 into F if the text's
//	                     SHA-256 is SUM (hex); answer "OK", else
//	                     "garbled" and F is removed (the ttyS1 shell's
//	                     command file, see images/guest.ShellProgram)
//	        watch PID S  kill PID and its descendants (SIGKILL) after S
//	                     seconds unless "unwatch PID" comes first; no
//	                     answer (the ttyS1 shell's command)
//	        unwatch PID  no answer
//	        hello        answer "OK" (the helper has started)
//	        exit         answer "OK" and exit
package main

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

func main() {
	switch {
	case len(os.Args) == 3 && os.Args[1] == "batch":
		os.Exit(batchFile(os.Args[2], os.Stdout))
	case len(os.Args) == 4 && os.Args[1] == "serve":
		if err := serve(os.Args[2], os.Args[3]); err != nil {
			fmt.Fprintln(os.Stderr, "vmnet-helper:", err)
			os.Exit(1)
		}
	default:
		fmt.Fprintln(os.Stderr, "usage: vmnet-helper batch FILE | serve REQ ANS")
		os.Exit(2)
	}
}

// serve answers requests until "exit". Both FIFOs are opened read-write,
// so that neither open blocks and the request FIFO never reaches EOF.
func serve(reqPath, ansPath string) error {
	req, err := os.OpenFile(reqPath, os.O_RDWR, 0)
	if err != nil {
		return err
	}
	ans, err := os.OpenFile(ansPath, os.O_RDWR, 0)
	if err != nil {
		return err
	}
	r := bufio.NewReader(req)
	var mu sync.Mutex
	watched := map[string]*time.Timer{}
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			return err
		}
		var out bytes.Buffer
		cmd, arg, _ := strings.Cut(strings.TrimSpace(line), " ")
		switch cmd {
		case "identity":
			text, err := readIdentity(os.Stdin)
			if err != nil {
				fmt.Fprintf(&out, "ERR %v\n", err)
			} else {
				fmt.Fprintf(&out, "OK %s\n", text)
			}
		case "clock":
			if err := setClock(arg); err != nil {
				fmt.Fprintf(&out, "ERR %v\n", err)
			} else {
				out.WriteString("OK\n")
			}
		case "batch":
			st := batchFile(arg, &out)
			fmt.Fprintf(&out, "END %d\n", st)
		case "decode":
			f, sum, _ := strings.Cut(arg, " ")
			if err := decodeFile(f, sum); err != nil {
				out.WriteString("garbled\n")
			} else {
				out.WriteString("OK\n")
			}
		case "watch":
			pid, secs, _ := strings.Cut(arg, " ")
			p, perr := strconv.Atoi(pid)
			s, serr := strconv.Atoi(secs)
			if perr != nil || serr != nil || p <= 1 {
				continue
			}
			mu.Lock()
			watched[pid] = time.AfterFunc(time.Duration(s)*time.Second, func() {
				mu.Lock()
				defer mu.Unlock()
				if watched[pid] != nil {
					killTree(p)
					delete(watched, pid)
				}
			})
			mu.Unlock()
			continue
		case "unwatch":
			mu.Lock()
			if t := watched[arg]; t != nil {
				t.Stop()
				delete(watched, arg)
			}
			mu.Unlock()
			continue
		case "hello":
			out.WriteString("OK\n")
		case "exit":
			ans.WriteString("OK\n")
			return nil
		default:
			fmt.Fprintf(&out, "ERR unknown request %q\n", cmd)
		}
		if _, err := ans.Write(out.Bytes()); err != nil {
			return err
		}
	}
}

// readIdentity reads base64 lines up to "END <hex sha256>" one read at a
// time: the tty is in canonical mode, so a read returns at most one
// line and nothing after the END line is taken from the shell that
// reads ttyS1 later. It returns the first line of the decoded text.
func readIdentity(tty io.Reader) (string, error) {
	var b64 strings.Builder
	buf := make([]byte, 4096)
	var pending []byte
	for {
		i := bytes.IndexByte(pending, '\n')
		if i < 0 {
			n, err := tty.Read(buf)
			if n == 0 && err != nil {
				return "", fmt.Errorf("the identity sent after the restore did not arrive: %v", err)
			}
			pending = append(pending, buf[:n]...)
			continue
		}
		l := strings.TrimRight(string(pending[:i]), "\r")
		pending = pending[i+1:]
		if strings.HasPrefix(l, "END ") {
			sum := l[len("END "):]
			text, err := base64.StdEncoding.DecodeString(b64.String())
			want, herr := hex.DecodeString(sum)
			got := sha256.Sum256(text)
			if err != nil || herr != nil || !bytes.Equal(want, got[:]) {
				return "", fmt.Errorf("the identity sent after the restore arrived garbled")
			}
			first, _, _ := strings.Cut(string(text), "\n")
			return first, nil
		}
		b64.WriteString(l)
	}
}

// killTree kills pid and every process descended from it (read from
// /proc), so that nothing a timed-out command started keeps running.
func killTree(pid int) {
	children := map[int][]int{}
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		p, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile("/proc/" + e.Name() + "/stat")
		if err != nil {
			continue
		}
		// pid (comm) state ppid ...: comm may hold spaces and parentheses.
		i := bytes.LastIndexByte(b, ')')
		if i < 0 {
			continue
		}
		f := strings.Fields(string(b[i+1:]))
		if len(f) < 2 {
			continue
		}
		if pp, err := strconv.Atoi(f[1]); err == nil {
			children[pp] = append(children[pp], p)
		}
	}
	todo := []int{pid}
	for len(todo) > 0 {
		p := todo[0]
		todo = todo[1:]
		syscall.Kill(p, syscall.SIGKILL)
		todo = append(todo, children[p]...)
	}
}

// decodeFile writes the base64 text of f.b64, decoded, to f if its
// SHA-256 is sum.
func decodeFile(f, sum string) error {
	b64, err := os.ReadFile(f + ".b64")
	if err != nil {
		return err
	}
	text, err := base64.StdEncoding.DecodeString(strings.TrimSpace(string(b64)))
	want, herr := hex.DecodeString(sum)
	got := sha256.Sum256(text)
	if err != nil || herr != nil || !bytes.Equal(want, got[:]) {
		os.Remove(f)
		return fmt.Errorf("garbled")
	}
	return os.WriteFile(f, text, 0o600)
}

func setClock(secs string) error {
	s, err := strconv.ParseInt(secs, 10, 64)
	if err != nil {
		return fmt.Errorf("vmnet.time=%s: not a number of seconds", secs)
	}
	tv := syscall.Timeval{Sec: s}
	if err := syscall.Settimeofday(&tv); err != nil {
		return fmt.Errorf("set the clock to %d: %v", s, err)
	}
	return nil
}

// batchFile applies the lines of path and reports failures as ip -batch
// does; it returns the exit status.
func batchFile(path string, out io.Writer) int {
	data, err := os.ReadFile(path)
	if err != nil {
		fmt.Fprintf(out, "%v\n", err)
		return 1
	}
	nl, err := openNetlink()
	if err != nil {
		fmt.Fprintf(out, "%v\n", err)
		return 1
	}
	defer nl.close()
	st := 0
	for i, l := range strings.Split(strings.TrimRight(string(data), "\n"), "\n") {
		if strings.TrimSpace(l) == "" {
			continue
		}
		if err := nl.apply(strings.Fields(l)); err != nil {
			fmt.Fprintf(out, "%v\nCommand failed %s:%d\n", err, path, i+1)
			st = 1
		}
	}
	return st
}
