//go:build !race

package openaiwebhook

const raceEnabled = false
