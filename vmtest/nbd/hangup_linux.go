package nbd

import (
	"crypto/tls"
	"net"
	"syscall"

	"golang.org/x/sys/unix"
)

// peerClosed reports whether the client has closed its socket entirely (a
// unix socket's peer closed, a TCP reset), even with unread data still
// queued: what a reader waiting for budget, which reads nothing, cannot
// see otherwise. A TCP peer that only sent FIN is indistinguishable from
// one that shut down writing after NBD_CMD_DISC and still wants its
// replies, so it does not count.
func peerClosed(nc net.Conn) bool {
	if tc, ok := nc.(*tls.Conn); ok {
		nc = tc.NetConn()
	}
	sc, ok := nc.(syscall.Conn)
	if !ok {
		return false
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return false
	}
	closed := false
	rc.Control(func(fd uintptr) {
		fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
		if n, err := unix.Poll(fds, 0); err == nil && n > 0 {
			closed = fds[0].Revents&(unix.POLLHUP|unix.POLLERR) != 0
		}
	})
	return closed
}
