//go:build !linux

package portcheck

import (
	"errors"
	"net"
)

// listenReusePort is only used by tests that run on Linux.
func listenReusePort(string) (net.Listener, error) {
	return nil, errors.New("not on Linux")
}
