//go:build race

package queuestore

// raceEnabled: the race detector slows the tests that store large
// backlogs, which store less.
const raceEnabled = true
