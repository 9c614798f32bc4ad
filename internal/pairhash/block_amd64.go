//go:build amd64 && !purego

package pairhash

import "golang.org/x/sys/cpu"

//go:generate go run gen.go

// available: the CPU has the SHA extensions (CPUID leaf 7, EBX bit 29)
// and the SSSE3 and SSE4.1 instructions the rounds use around them.
var available = cpu.X86.HasSSSE3 && cpu.X86.HasSSE41 && hasSHA()

func hasSHA() bool {
	if max, _, _, _ := cpuid(0, 0); max < 7 {
		return false
	}
	_, ebx, _, _ := cpuid(7, 0)
	return ebx&(1<<29) != 0
}

// block2 hashes the whole blocks of p1 into h1 and as many of p2 into h2.
//
//go:noescape
func block2(h1, h2 *[8]uint32, p1, p2 []byte)

func cpuid(leaf, sub uint32) (eax, ebx, ecx, edx uint32)
