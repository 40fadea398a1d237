package vnethdr

import "testing"

func BenchmarkXCopy(b *testing.B) {
	src := make([]byte, 65160)
	dst := make([][]byte, 45)
	for i := range dst {
		dst[i] = make([]byte, 1600)
	}
	b.Run("memmove", func(b *testing.B) {
		b.SetBytes(65160)
		loop(b, func() {
			for i := 0; i < 45; i++ {
				copy(dst[i][66:], src[i*1448:(i+1)*1448])
			}
		})
	})
	b.Run("memmove+sum", func(b *testing.B) {
		b.SetBytes(65160)
		var s uint64
		loop(b, func() {
			for i := 0; i < 45; i++ {
				copy(dst[i][66:], src[i*1448:(i+1)*1448])
				s += sumFast(dst[i][66 : 66+1448])
			}
		})
	})
	b.Run("copySum", func(b *testing.B) {
		b.SetBytes(65160)
		var s uint64
		loop(b, func() {
			for i := 0; i < 45; i++ {
				s += copySum(dst[i][66:], src[i*1448:(i+1)*1448])
			}
		})
	})
}
