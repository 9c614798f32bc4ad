//go:build !race

package pairhash

const raceEnabled = false
