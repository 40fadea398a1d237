//go:build amd64 && !purego

#include "textflag.h"

// The AVX2 loops add whole 32-bit words (x = lo + hi<<16) into eight 32-bit
// lanes, which may wrap, and their high halves (hi) into eight more, which
// do not: a lane gains at most 0xffff per 64 bytes of input, so the callers'
// 512 KiB limit keeps it below 2^30. The low halves' sum, also below 2^30,
// is then exact modulo 2^32: sum(x) - sum(hi)<<16. This costs one shift and
// two adds per 32 bytes where masking both halves costs one more. Two such
// pairs of accumulators (Y0/Y1, Y2/Y3) break the dependency chains; their
// four lanes together stay below 2^32. The result is the LE-domain sum,
// unfolded.

// Lengths need not be multiples of 32: what the vector loops leave (fewer
// than 32 bytes) is added in a general register with end-around carry, 8, 4,
// 2 and 1 bytes at a time; an odd last byte is the low byte of an LE word, as
// in sumGeneric. Doing the ends here spares each call the Go loops and calls
// that cost more than the vector work on a 1448-byte segment.

// LOWHALVES turns the word sums in Y0 and Y2 into low-half sums.
#define LOWHALVES \
	VPSLLD $16, Y1, Y6 \
	VPSUBD Y6, Y0, Y0 \
	VPSLLD $16, Y3, Y7 \
	VPSUBD Y7, Y2, Y2

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

// func sumAVX2(p *byte, n int) uint64
TEXT ·sumAVX2(SB), NOSPLIT, $0-24
	MOVQ p+0(FP), SI
	MOVQ n+8(FP), CX
	VPXOR Y0, Y0, Y0
	VPXOR Y1, Y1, Y1
	VPXOR Y2, Y2, Y2
	VPXOR Y3, Y3, Y3
	CMPQ CX, $128
	JB sum64

sumloop:
	VMOVDQU (SI), Y4
	VMOVDQU 32(SI), Y5
	VMOVDQU 64(SI), Y8
	VMOVDQU 96(SI), Y9
	VPSRLD $16, Y4, Y6
	VPSRLD $16, Y5, Y7
	VPSRLD $16, Y8, Y10
	VPSRLD $16, Y9, Y11
	VPADDD Y4, Y0, Y0
	VPADDD Y5, Y2, Y2
	VPADDD Y6, Y1, Y1
	VPADDD Y7, Y3, Y3
	VPADDD Y8, Y0, Y0
	VPADDD Y9, Y2, Y2
	VPADDD Y10, Y1, Y1
	VPADDD Y11, Y3, Y3
	ADDQ $128, SI
	SUBQ $128, CX
	CMPQ CX, $128
	JAE sumloop

sum64:
	CMPQ CX, $64
	JB sum32
	VMOVDQU (SI), Y4
	VMOVDQU 32(SI), Y5
	VPSRLD $16, Y4, Y6
	VPSRLD $16, Y5, Y7
	VPADDD Y4, Y0, Y0
	VPADDD Y5, Y2, Y2
	VPADDD Y6, Y1, Y1
	VPADDD Y7, Y3, Y3
	ADDQ $64, SI
	SUBQ $64, CX

sum32:
	CMPQ CX, $32
	JB sumreduce
	VMOVDQU (SI), Y4
	VPSRLD $16, Y4, Y6
	VPADDD Y4, Y0, Y0
	VPADDD Y6, Y1, Y1
	ADDQ $32, SI
	SUBQ $32, CX

sumreduce:
	LOWHALVES
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
	CMPQ CX, $128
	JB copy64

copyloop:
	VMOVDQU (SI), Y4
	VMOVDQU 32(SI), Y5
	VMOVDQU 64(SI), Y8
	VMOVDQU 96(SI), Y9
	VMOVDQU Y4, 0(DI)
	VMOVDQU Y5, 32(DI)
	VMOVDQU Y8, 64(DI)
	VMOVDQU Y9, 96(DI)
	VPSRLD $16, Y4, Y6
	VPSRLD $16, Y5, Y7
	VPSRLD $16, Y8, Y10
	VPSRLD $16, Y9, Y11
	VPADDD Y4, Y0, Y0
	VPADDD Y5, Y2, Y2
	VPADDD Y6, Y1, Y1
	VPADDD Y7, Y3, Y3
	VPADDD Y8, Y0, Y0
	VPADDD Y9, Y2, Y2
	VPADDD Y10, Y1, Y1
	VPADDD Y11, Y3, Y3
	ADDQ $128, SI
	ADDQ $128, DI
	SUBQ $128, CX
	CMPQ CX, $128
	JAE copyloop

copy64:
	CMPQ CX, $64
	JB copy32
	VMOVDQU (SI), Y4
	VMOVDQU 32(SI), Y5
	VMOVDQU Y4, 0(DI)
	VMOVDQU Y5, 32(DI)
	VPSRLD $16, Y4, Y6
	VPSRLD $16, Y5, Y7
	VPADDD Y4, Y0, Y0
	VPADDD Y5, Y2, Y2
	VPADDD Y6, Y1, Y1
	VPADDD Y7, Y3, Y3
	ADDQ $64, SI
	ADDQ $64, DI
	SUBQ $64, CX

copy32:
	CMPQ CX, $32
	JB copyreduce
	VMOVDQU (SI), Y4
	VMOVDQU Y4, 0(DI)
	VPSRLD $16, Y4, Y6
	VPADDD Y4, Y0, Y0
	VPADDD Y6, Y1, Y1
	ADDQ $32, SI
	ADDQ $32, DI
	SUBQ $32, CX

copyreduce:
	LOWHALVES
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
