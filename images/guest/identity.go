package guest

import (
	"crypto/sha256"
	"encoding/base64"
	"fmt"
	"strings"
)

// identityChunk is the base64 text per line: well below the 4095-byte
// line limit of the guest tty's canonical mode.
const identityChunk = 3072

// IdentityEnd starts the last line of IdentityText, followed by the
// SHA-256 of the words in hex.
const IdentityEnd = "END "

// IdentityText is what a restored test-image guest waiting at its
// snapshot point (WarmMarker) reads on ttyS1 to learn who it is: words
// are vmnet.* parameters as on the kernel command line, joined by spaces,
// base64-encoded in lines, then IdentityEnd and the text's SHA-256, which
// /init checks before it applies them.
func IdentityText(words []string) string {
	text := strings.Join(words, " ")
	b64 := base64.StdEncoding.EncodeToString([]byte(text))
	var s strings.Builder
	for i := 0; i < len(b64); i += identityChunk {
		s.WriteString(b64[i:min(i+identityChunk, len(b64))] + "\n")
	}
	fmt.Fprintf(&s, "%s%x\n", IdentityEnd, sha256.Sum256([]byte(text)))
	return s.String()
}
