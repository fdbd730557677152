//go:build !unix

package freeport

// Without record locks, ports are only kept apart within one process.
func lock(int) (bool, error) { return true, nil }

func unlock(int) {}
