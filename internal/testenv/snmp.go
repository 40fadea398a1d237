package testenv

import (
	"os"
	"strconv"
	"strings"
	"testing"

	"github.com/vmnet/vmnet/netns"
)

// SNMPErrorCounters are the counters of a namespace's IP stack that count
// packets the kernel dropped as bad (checksum, length, header): a frame
// dropped there shows even when TCP's retransmissions hide it from the
// sockets.
var SNMPErrorCounters = []string{
	"IpInHdrErrors", "IpInAddrErrors", "IpInDiscards", "IpReasmFails",
	"TcpInErrs", "TcpInCsumErrors",
	"UdpInErrors", "UdpInCsumErrors",
	"Ip6InHdrErrors", "Ip6InTruncatedPkts", "Ip6InDiscards", "Ip6ReasmFails",
	"Udp6InErrors", "Udp6InCsumErrors",
}

// SNMP reads ns's /proc/net/snmp and snmp6 counters, keyed as nstat
// names them (TcpInCsumErrors, Udp6InErrors). It fails t if they cannot
// be read.
func SNMP(t testing.TB, ns netns.Handle) map[string]int64 {
	t.Helper()
	m := map[string]int64{}
	Do(t, ns, func() error {
		b, err := os.ReadFile("/proc/thread-self/net/snmp")
		if err != nil {
			return err
		}
		lines := strings.Split(string(b), "\n")
		for i := 0; i+1 < len(lines); i += 2 {
			names, vals := strings.Fields(lines[i]), strings.Fields(lines[i+1])
			for k := 1; k < len(names) && k < len(vals); k++ {
				v, _ := strconv.ParseInt(vals[k], 10, 64)
				m[strings.TrimSuffix(names[0], ":")+names[k]] = v
			}
		}
		b, err = os.ReadFile("/proc/thread-self/net/snmp6")
		if err != nil {
			return err
		}
		for _, l := range strings.Split(string(b), "\n") {
			if f := strings.Fields(l); len(f) == 2 {
				v, _ := strconv.ParseInt(f[1], 10, 64)
				m[f[0]] = v
			}
		}
		return nil
	})
	if len(m) < 20 {
		t.Fatalf("could not read the SNMP counters of a namespace (%d read)", len(m))
	}
	return m
}

// NoSNMPErrors fails t for every error counter (SNMPErrorCounters) of
// ns's IP stack that is not zero; who names the namespace in the message.
func NoSNMPErrors(t testing.TB, ns netns.Handle, who string) {
	t.Helper()
	m := SNMP(t, ns)
	for _, k := range SNMPErrorCounters {
		if m[k] != 0 {
			t.Errorf("%s: %s = %d: the kernel dropped frames", who, k, m[k])
		}
	}
}
