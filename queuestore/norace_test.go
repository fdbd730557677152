//go:build !race

package queuestore

const raceEnabled = false
