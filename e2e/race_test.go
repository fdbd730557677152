//go:build race

package e2e_test

// raceEnabled says whether the tests run with the race detector.
const raceEnabled = true
