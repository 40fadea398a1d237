//go:build !amd64 || purego

package vnethdr

func sumFast(b []byte) uint64 { return sumGeneric(b) }

// copySum copies src into dst (which must be at least as long) and returns
// the LE-domain sum of src.
func copySum(dst, src []byte) uint64 {
	copy(dst, src)
	return sumGeneric(src)
}
