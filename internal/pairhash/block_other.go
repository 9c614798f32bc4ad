//go:build !amd64 || purego

package pairhash

// available is false: Write hashes one stream after the other.
const available = false

func block2(h1, h2 *[8]uint32, p1, p2 []byte) { panic("pairhash: no two-lane block function") }
