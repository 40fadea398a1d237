//go:build amd64 && !purego

#include "textflag.h"

// The AVX2 loops keep eight 32-bit lanes for the low 16-bit halves of each
// 32-bit word and eight for the high halves. A lane gains at most 0xffff per
// 32 bytes, so the callers' 512 KiB limit keeps every lane, and the sum of
// four lanes, below 2^32. The result is the LE-domain sum, unfolded.

// REDUCE adds the lanes of Y0-Y3 into AX.
#define REDUCE \
	VPADDD Y2, Y0, Y0 \
	VPADDD Y3, Y1, Y1 \
	VPADDD Y1, Y0, Y0 \
	VEXTRACTI128 $1, Y0, X1 \
	VPMOVZXDQ X0, Y2 \
	VPMOVZXDQ X1, Y3 \
	VPADDQ Y3, Y2, Y2 \
	VEXTRACTI128 $1, Y2, X3 \
	VPADDQ X3, X2, X2 \
	VPSHUFD $0x4e, X2, X3 \
	VPADDQ X3, X2, X2 \
	VMOVQ X2, AX \
	VZEROUPPER

// ACC32 adds the 32 bytes in Y4 to the accumulators Y0 (low halves) and Y1
// (high halves), using Y6 as scratch and Y15 as the 0x0000ffff mask.
#define ACC32 \
	VPAND Y15, Y4, Y6 \
	VPSRLD $16, Y4, Y4 \
	VPADDD Y6, Y0, Y0 \
	VPADDD Y4, Y1, Y1

// func sumAVX2(p *byte, n int) uint64
// n is a multiple of 32.
TEXT ·sumAVX2(SB), NOSPLIT, $0-24
	MOVQ p+0(FP), SI
	MOVQ n+8(FP), CX
	VPXOR Y0, Y0, Y0
	VPXOR Y1, Y1, Y1
	VPXOR Y2, Y2, Y2
	VPXOR Y3, Y3, Y3
	VPCMPEQD Y15, Y15, Y15
	VPSRLD $16, Y15, Y15
	CMPQ CX, $64
	JB sum32

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
	SUBQ $64, CX
	CMPQ CX, $64
	JAE sumloop

sum32:
	CMPQ CX, $32
	JB sumdone
	VMOVDQU (SI), Y4
	ACC32

sumdone:
	REDUCE
	MOVQ AX, ret+16(FP)
	RET

// func copySumAVX2(dst, src *byte, n int) uint64
// n is a multiple of 32.
TEXT ·copySumAVX2(SB), NOSPLIT, $0-32
	MOVQ dst+0(FP), DI
	MOVQ src+8(FP), SI
	MOVQ n+16(FP), CX
	VPXOR Y0, Y0, Y0
	VPXOR Y1, Y1, Y1
	VPXOR Y2, Y2, Y2
	VPXOR Y3, Y3, Y3
	VPCMPEQD Y15, Y15, Y15
	VPSRLD $16, Y15, Y15
	CMPQ CX, $64
	JB copy32

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
	SUBQ $64, CX
	CMPQ CX, $64
	JAE copyloop

copy32:
	CMPQ CX, $32
	JB copydone
	VMOVDQU (SI), Y4
	VMOVDQU Y4, (DI)
	ACC32

copydone:
	REDUCE
	MOVQ AX, ret+24(FP)
	RET
