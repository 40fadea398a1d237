package vnethdr

import "fmt"

// Rule names the check a packet failed. Rules up to RuleGSOByFrags mirror the
// kernel's virtio_net_hdr_to_skb and tun_get_user; the rest are the checks the
// kernel's GSO code makes later on the packet itself.
type Rule int

const (
	RuleShortHeader     Rule = iota + 1 // fewer bytes than the vnet header
	RuleGSOType                         // unknown gso_type
	RuleGSOSize                         // gso_size 0 on a GSO packet
	RuleGSOByFrags                      // gso_size 0xffff (GSO_BY_FRAGS) is kernel-internal
	RuleHdrLen                          // hdr_len beyond the end of the packet
	RuleCsumBounds                      // csum_start/csum_offset point past the packet
	RuleTransportOffset                 // csum_start below 20 (IPv4) or 40 (TCPv6)
	RuleTCPCsumOffset                   // TCP GSO with partial checksum and csum_offset != 16
	RuleUDPL4NoCsum                     // UDP_L4 without NEEDS_CSUM
	RuleUDPL4CsumOffset                 // UDP_L4 with csum_offset != 6
	RuleUDPL4ECN                        // UDP_L4 with the ECN bit
	RuleTooManySegments                 // more segments than the kernel allows
	RuleLink                            // Ethernet header truncated or not IPv4/IPv6
	RuleNetwork                         // IP header truncated, malformed, or not the gso_type's family
	RuleTransport                       // TCP/UDP header truncated, malformed, or not the gso_type's protocol
	RuleShortBatch                      // the caller's output buffers are too few or too small
)

var ruleNames = [...]string{
	RuleShortHeader:     "vnet header truncated",
	RuleGSOType:         "unknown gso_type",
	RuleGSOSize:         "gso_size is 0",
	RuleGSOByFrags:      "gso_size is GSO_BY_FRAGS",
	RuleHdrLen:          "hdr_len beyond the packet",
	RuleCsumBounds:      "csum_start/csum_offset beyond the packet",
	RuleTransportOffset: "csum_start below the minimum network header",
	RuleTCPCsumOffset:   "TCP csum_offset is not 16",
	RuleUDPL4NoCsum:     "UDP_L4 without NEEDS_CSUM",
	RuleUDPL4CsumOffset: "UDP_L4 csum_offset is not 6",
	RuleUDPL4ECN:        "UDP_L4 with ECN",
	RuleTooManySegments: "too many segments",
	RuleLink:            "bad link-layer header",
	RuleNetwork:         "bad network header",
	RuleTransport:       "bad transport header",
	RuleShortBatch:      "output batch too small",
}

func (r Rule) String() string {
	if r > 0 && int(r) < len(ruleNames) {
		return ruleNames[r]
	}
	return fmt.Sprintf("rule(%d)", int(r))
}

// Error reports which rule a packet broke. errors.Is(err, ErrGSOSize) and the
// like match on the rule alone.
type Error struct {
	Rule   Rule
	Detail string
}

func (e *Error) Error() string {
	if e.Detail == "" {
		return "vnethdr: " + e.Rule.String()
	}
	return "vnethdr: " + e.Rule.String() + ": " + e.Detail
}

// Is matches any *Error with the same Rule.
func (e *Error) Is(target error) bool {
	t, ok := target.(*Error)
	return ok && t.Rule == e.Rule
}

// Sentinels for errors.Is.
var (
	ErrShortHeader     = &Error{Rule: RuleShortHeader}
	ErrGSOType         = &Error{Rule: RuleGSOType}
	ErrGSOSize         = &Error{Rule: RuleGSOSize}
	ErrGSOByFrags      = &Error{Rule: RuleGSOByFrags}
	ErrHdrLen          = &Error{Rule: RuleHdrLen}
	ErrCsumBounds      = &Error{Rule: RuleCsumBounds}
	ErrTransportOffset = &Error{Rule: RuleTransportOffset}
	ErrTCPCsumOffset   = &Error{Rule: RuleTCPCsumOffset}
	ErrUDPL4NoCsum     = &Error{Rule: RuleUDPL4NoCsum}
	ErrUDPL4CsumOffset = &Error{Rule: RuleUDPL4CsumOffset}
	ErrUDPL4ECN        = &Error{Rule: RuleUDPL4ECN}
	ErrTooManySegments = &Error{Rule: RuleTooManySegments}
	ErrLink            = &Error{Rule: RuleLink}
	ErrNetwork         = &Error{Rule: RuleNetwork}
	ErrTransport       = &Error{Rule: RuleTransport}
	ErrShortBatch      = &Error{Rule: RuleShortBatch}
)

func fail(r Rule, format string, args ...any) error {
	return &Error{Rule: r, Detail: fmt.Sprintf(format, args...)}
}
