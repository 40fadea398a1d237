//go:build amd64 && !purego

#include "textflag.h"

// The AVX2 loops keep eight 32-bit lanes for the low 16-bit halves of each
// 32-bit word and eight for the high halves. A lane gains at most 0xffff per
// 32 bytes, so the callers' 512 KiB limit keeps every lane, and the sum of
// four lanes, below 2^32. The result is the LE-domain sum, unfolded.

// Lengths need not be multiples of 32: what the vector loops leave (fewer
// than 32 bytes) is added in a general register with end-around carry, 8, 4,
// 2 and 1 bytes at a time; an odd last byte is the low byte of an LE word, as
// in sumGeneric. Doing the ends here spares each call the Go loops and calls
// that cost more than the vector work on a 1448-byte segment.

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
	ADDQ $32, SI
	SUBQ $32, CX

sumdone:
	REDUCE
	XORQ BX, BX
	// The < 32 bytes left at SI, into BX.
	CMPQ CX, $16
	JB sumt8
	MOVQ (SI), DX
	MOVQ 8(SI), R10
	ADDQ DX, BX
	ADCQ R10, BX
	ADCQ $0, BX
	ADDQ $16, SI
	ADDQ $16, DI
	SUBQ $16, CX

sumt8:
	CMPQ CX, $8
	JB sumt4
	MOVQ (SI), DX
	ADDQ DX, BX
	ADCQ $0, BX
	ADDQ $8, SI
	ADDQ $8, DI
	SUBQ $8, CX

sumt4:
	CMPQ CX, $4
	JB sumt2
	MOVL (SI), DX
	ADDQ DX, BX
	ADCQ $0, BX
	ADDQ $4, SI
	ADDQ $4, DI
	SUBQ $4, CX

sumt2:
	CMPQ CX, $2
	JB sumt1
	MOVWQZX (SI), DX
	ADDQ DX, BX
	ADCQ $0, BX
	ADDQ $2, SI
	ADDQ $2, DI
	SUBQ $2, CX

sumt1:
	TESTQ CX, CX
	JZ sumtdone
	MOVBQZX (SI), DX
	ADDQ DX, BX
	ADCQ $0, BX
	INCQ SI
	INCQ DI

sumtdone:
	ADDQ BX, AX
	ADCQ $0, AX
	MOVQ AX, ret+16(FP)
	RET

// func copySumAVX2(dst, src *byte, n, head int) (headSum, rest uint64)
// The first head (< 32, <= n) bytes are copied and summed on their own (so
// that the vector stores after them can be aligned); rest is the sum of the
// other n-head bytes, as if they started at offset 0.
TEXT ·copySumAVX2(SB), NOSPLIT, $0-48
	MOVQ dst+0(FP), DI
	MOVQ src+8(FP), SI
	MOVQ head+24(FP), CX
	MOVQ n+16(FP), R11
	SUBQ CX, R11
	XORQ BX, BX
	// The < 32 bytes left at SI (copied to DI), into BX.
	CMPQ CX, $16
	JB head8
	MOVQ (SI), DX
	MOVQ 8(SI), R10
	MOVQ DX, 0(DI)
	MOVQ R10, 8(DI)
	ADDQ DX, BX
	ADCQ R10, BX
	ADCQ $0, BX
	ADDQ $16, SI
	ADDQ $16, DI
	SUBQ $16, CX

head8:
	CMPQ CX, $8
	JB head4
	MOVQ (SI), DX
	MOVQ DX, 0(DI)
	ADDQ DX, BX
	ADCQ $0, BX
	ADDQ $8, SI
	ADDQ $8, DI
	SUBQ $8, CX

head4:
	CMPQ CX, $4
	JB head2
	MOVL (SI), DX
	MOVL DX, (DI)
	ADDQ DX, BX
	ADCQ $0, BX
	ADDQ $4, SI
	ADDQ $4, DI
	SUBQ $4, CX

head2:
	CMPQ CX, $2
	JB head1
	MOVWQZX (SI), DX
	MOVW DX, (DI)
	ADDQ DX, BX
	ADCQ $0, BX
	ADDQ $2, SI
	ADDQ $2, DI
	SUBQ $2, CX

head1:
	TESTQ CX, CX
	JZ headdone
	MOVBQZX (SI), DX
	MOVB DX, (DI)
	ADDQ DX, BX
	ADCQ $0, BX
	INCQ SI
	INCQ DI

headdone:
	MOVQ BX, headSum+32(FP)
	MOVQ R11, CX
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
	ADDQ $32, SI
	ADDQ $32, DI
	SUBQ $32, CX

copydone:
	REDUCE
	XORQ BX, BX
	// The < 32 bytes left at SI (copied to DI), into BX.
	CMPQ CX, $16
	JB tail8
	MOVQ (SI), DX
	MOVQ 8(SI), R10
	MOVQ DX, 0(DI)
	MOVQ R10, 8(DI)
	ADDQ DX, BX
	ADCQ R10, BX
	ADCQ $0, BX
	ADDQ $16, SI
	ADDQ $16, DI
	SUBQ $16, CX

tail8:
	CMPQ CX, $8
	JB tail4
	MOVQ (SI), DX
	MOVQ DX, 0(DI)
	ADDQ DX, BX
	ADCQ $0, BX
	ADDQ $8, SI
	ADDQ $8, DI
	SUBQ $8, CX

tail4:
	CMPQ CX, $4
	JB tail2
	MOVL (SI), DX
	MOVL DX, (DI)
	ADDQ DX, BX
	ADCQ $0, BX
	ADDQ $4, SI
	ADDQ $4, DI
	SUBQ $4, CX

tail2:
	CMPQ CX, $2
	JB tail1
	MOVWQZX (SI), DX
	MOVW DX, (DI)
	ADDQ DX, BX
	ADCQ $0, BX
	ADDQ $2, SI
	ADDQ $2, DI
	SUBQ $2, CX

tail1:
	TESTQ CX, CX
	JZ taildone
	MOVBQZX (SI), DX
	MOVB DX, (DI)
	ADDQ DX, BX
	ADCQ $0, BX
	INCQ SI
	INCQ DI

taildone:
	ADDQ BX, AX
	ADCQ $0, AX
	MOVQ AX, rest+40(FP)
	RET
