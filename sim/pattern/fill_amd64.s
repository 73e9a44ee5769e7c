#include "textflag.h"

// The splitmix64 finaliser on four 64-bit lanes (see mix in pattern.go):
//	x += 0x9e3779b97f4a7c15
//	x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9
//	x = (x ^ (x >> 27)) * 0x94d049bb133111eb
//	x ^= x >> 31
// AVX2 has no 64-bit multiply: the low 64 bits of a*c are
// a.lo*c.lo + ((a.hi*c.lo + a.lo*c.hi) << 32), from VPMULUDQ's 32x32->64
// products. T and U are scratch.
#define MIX(X, T, U) \
	VPADDQ Y10, X, X \
	VPSRLQ $30, X, T \
	VPXOR T, X, X \
	VPSRLQ $32, X, T \
	VPMULUDQ Y11, T, T \
	VPMULUDQ Y12, X, U \
	VPADDQ U, T, T \
	VPSLLQ $32, T, T \
	VPMULUDQ Y11, X, X \
	VPADDQ T, X, X \
	VPSRLQ $27, X, T \
	VPXOR T, X, X \
	VPSRLQ $32, X, T \
	VPMULUDQ Y13, T, T \
	VPMULUDQ Y14, X, U \
	VPADDQ U, T, T \
	VPSLLQ $32, T, T \
	VPMULUDQ Y13, X, X \
	VPADDQ T, X, X \
	VPSRLQ $31, X, T \
	VPXOR T, X, X

// setup loads the constants: Y9 = s in every lane, Y10 the golden ratio,
// Y11/Y12 and Y13/Y14 the low/high halves of the two multipliers, Y8 the
// lane offsets [off, off+8, off+16, off+24], Y15 = 64 in every lane.
#define SETUP(S, OFF) \
	MOVQ S, X9 \
	VPBROADCASTQ X9, Y9 \
	MOVQ $0x9e3779b97f4a7c15, AX \
	MOVQ AX, X10 \
	VPBROADCASTQ X10, Y10 \
	MOVQ $0x1ce4e5b9, AX \
	MOVQ AX, X11 \
	VPBROADCASTQ X11, Y11 \
	MOVQ $0xbf58476d, AX \
	MOVQ AX, X12 \
	VPBROADCASTQ X12, Y12 \
	MOVQ $0x133111eb, AX \
	MOVQ AX, X13 \
	VPBROADCASTQ X13, Y13 \
	MOVQ $0x94d049bb, AX \
	MOVQ AX, X14 \
	VPBROADCASTQ X14, Y14 \
	MOVQ $64, AX \
	MOVQ AX, X15 \
	VPBROADCASTQ X15, Y15 \
	MOVQ OFF, X8 \
	VPBROADCASTQ X8, Y8 \
	VMOVDQU laneOffsets<>(SB), Y7 \
	VPADDQ Y7, Y8, Y8

DATA laneOffsets<>+0(SB)/8, $0
DATA laneOffsets<>+8(SB)/8, $8
DATA laneOffsets<>+16(SB)/8, $16
DATA laneOffsets<>+24(SB)/8, $24
GLOBL laneOffsets<>(SB), RODATA|NOPTR, $32

DATA lane32<>+0(SB)/8, $32
DATA lane32<>+8(SB)/8, $32
DATA lane32<>+16(SB)/8, $32
DATA lane32<>+24(SB)/8, $32
GLOBL lane32<>(SB), RODATA|NOPTR, $32

// func fillAVX2(p []byte, s, off uint64)
// len(p) is a multiple of 64; off is the device offset of p[0], a multiple
// of 8.
TEXT ·fillAVX2(SB), NOSPLIT, $0-40
	MOVQ p_base+0(FP), DI
	MOVQ p_len+8(FP), CX
	MOVQ s+24(FP), BX
	MOVQ off+32(FP), DX
	SETUP(BX, DX)
	VMOVDQU lane32<>(SB), Y7
	VPADDQ Y7, Y8, Y7 // Y7: the offsets of the second four words
	SHRQ $6, CX
	JZ done
loop:
	VPXOR Y9, Y8, Y0
	VPXOR Y9, Y7, Y1
	MIX(Y0, Y2, Y3)
	MIX(Y1, Y4, Y5)
	VMOVDQU Y0, 0(DI)
	VMOVDQU Y1, 32(DI)
	VPADDQ Y15, Y8, Y8
	VPADDQ Y15, Y7, Y7
	ADDQ $64, DI
	DECQ CX
	JNZ loop
done:
	VZEROUPPER
	RET

// func diffAVX2(p []byte, s, off uint64) int
// diffAVX2 returns the index of the first 64-byte block of p that differs
// from the pattern, or len(p). len(p) and off are as for fillAVX2.
TEXT ·diffAVX2(SB), NOSPLIT, $0-48
	MOVQ p_base+0(FP), DI
	MOVQ p_len+8(FP), CX
	MOVQ s+24(FP), BX
	MOVQ off+32(FP), DX
	SETUP(BX, DX)
	VMOVDQU lane32<>(SB), Y7
	VPADDQ Y7, Y8, Y7
	XORQ SI, SI
	SHRQ $6, CX
	JZ same
dloop:
	VPXOR Y9, Y8, Y0
	VPXOR Y9, Y7, Y1
	MIX(Y0, Y2, Y3)
	MIX(Y1, Y4, Y5)
	VPXOR 0(DI)(SI*1), Y0, Y0
	VPXOR 32(DI)(SI*1), Y1, Y1
	VPOR Y1, Y0, Y0
	VPTEST Y0, Y0
	JNZ differ
	VPADDQ Y15, Y8, Y8
	VPADDQ Y15, Y7, Y7
	ADDQ $64, SI
	DECQ CX
	JNZ dloop
same:
	MOVQ p_len+8(FP), SI
differ:
	MOVQ SI, ret+40(FP)
	VZEROUPPER
	RET
