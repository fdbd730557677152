//go:build unix

package freeport

import (
	"fmt"
	"os"
	"path/filepath"
	"sync"

	"golang.org/x/sys/unix"
)

// The ports are one byte each of a lock file shared by the user's test
// processes (one per user: another's file in a shared temporary directory
// could not be opened for writing). A process's record locks go when it
// exits, however it exits, so a crashed test run leaves nothing held. The
// file stays open for the process's life: closing any descriptor of it
// would drop all of the process's locks on it.
var lockFile = sync.OnceValues(func() (*os.File, error) {
	name := fmt.Sprintf("caddy-openai-webhook-ports-%d.lock", os.Getuid())
	return os.OpenFile(filepath.Join(os.TempDir(), name), os.O_RDWR|os.O_CREATE, 0o600)
})

// lock takes port's byte for this process, reporting false if another
// process holds it.
func lock(port int) (bool, error) {
	f, err := lockFile()
	if err != nil {
		return false, fmt.Errorf("opening the lock file: %w", err)
	}
	err = setLock(f, port, unix.F_WRLCK)
	if err == unix.EAGAIN || err == unix.EACCES {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("locking port %d: %w", port, err)
	}
	return true, nil
}

// unlock gives port's byte back.
func unlock(port int) {
	if f, err := lockFile(); err == nil {
		_ = setLock(f, port, unix.F_UNLCK)
	}
}

func setLock(f *os.File, port int, kind int16) error {
	return unix.FcntlFlock(f.Fd(), unix.F_SETLK, &unix.Flock_t{Type: kind, Whence: 0, Start: int64(port), Len: 1})
}
