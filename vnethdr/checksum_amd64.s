//go:build amd64 && !purego

#include "textflag.h"

// The AVX2 loops keep eight 32-bit lanes for the low 16-bit halves of each
// 32-bit word and eight for the high halves. A lane gains at most 0xffff per
// 64 bytes, so the callers' 512 KiB limit keeps every lane (and the sum of two
// lanes) below 2^32. The lanes are summed in Go, which also does the tail.

// func sumAVX2(p *byte, n int, out *[16]uint32)
TEXT ·sumAVX2(SB), NOSPLIT, $0-24
	MOVQ p+0(FP), SI
	MOVQ n+8(FP), CX
	MOVQ out+16(FP), DI
	VPXOR Y0, Y0, Y0
	VPXOR Y1, Y1, Y1
	VPXOR Y2, Y2, Y2
	VPXOR Y3, Y3, Y3
	VPCMPEQD Y15, Y15, Y15
	VPSRLD $16, Y15, Y15
	SHRQ $6, CX
	JZ sumdone

sumloop:
	VMOVDQU (SI), Y4
	VMOVDQU 32(SI), Y5
	VPAND Y15, Y4, Y6
	VPSRLD $16, Y4, Y4
	VPAND Y15, Y5, Y7
	VPSRLD $16, Y5, Y5
	VPADDD Y6, Y0, Y0
	VPADDD Y4, Y1, Y1
	VPADDD Y7, Y2, Y2
	VPADDD Y5, Y3, Y3
	ADDQ $64, SI
	DECQ CX
	JNZ sumloop

sumdone:
	VPADDD Y2, Y0, Y0
	VPADDD Y3, Y1, Y1
	VMOVDQU Y0, (DI)
	VMOVDQU Y1, 32(DI)
	VZEROUPPER
	RET

// func copySumAVX2(dst, src *byte, n int, out *[16]uint32)
TEXT ·copySumAVX2(SB), NOSPLIT, $0-32
	MOVQ dst+0(FP), DI
	MOVQ src+8(FP), SI
	MOVQ n+16(FP), CX
	MOVQ out+24(FP), DX
	VPXOR Y0, Y0, Y0
	VPXOR Y1, Y1, Y1
	VPXOR Y2, Y2, Y2
	VPXOR Y3, Y3, Y3
	VPCMPEQD Y15, Y15, Y15
	VPSRLD $16, Y15, Y15
	SHRQ $6, CX
	JZ copydone

copyloop:
	VMOVDQU (SI), Y4
	VMOVDQU 32(SI), Y5
	VMOVDQU Y4, (DI)
	VMOVDQU Y5, 32(DI)
	VPAND Y15, Y4, Y6
	VPSRLD $16, Y4, Y4
	VPAND Y15, Y5, Y7
	VPSRLD $16, Y5, Y5
	VPADDD Y6, Y0, Y0
	VPADDD Y4, Y1, Y1
	VPADDD Y7, Y2, Y2
	VPADDD Y5, Y3, Y3
	ADDQ $64, SI
	ADDQ $64, DI
	DECQ CX
	JNZ copyloop

copydone:
	VPADDD Y2, Y0, Y0
	VPADDD Y3, Y1, Y1
	VMOVDQU Y0, (DX)
	VMOVDQU Y1, 32(DX)
	VZEROUPPER
	RET
