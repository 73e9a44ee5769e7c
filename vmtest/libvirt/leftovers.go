package libvirt

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"

	golibvirt "github.com/digitalocean/go-libvirt"
)

// namePrefix starts every domain snaplab defines: snaplab-HOST-PID-N.
const namePrefix = "snaplab-"

// hostName is this host's name as it appears in domain names.
func hostName() string {
	h, err := os.Hostname()
	if err != nil || h == "" {
		return "localhost"
	}
	return strings.ReplaceAll(h, "-", "_")
}

// ownerPid parses the pid out of a domain name snaplab-HOST-PID-N when
// HOST is this host; ok is false for another host's or a foreign domain.
func ownerPid(name string) (pid int, ok bool) {
	rest, found := strings.CutPrefix(name, namePrefix+hostName()+"-")
	if !found {
		return 0, false
	}
	p, n, found := strings.Cut(rest, "-")
	if !found {
		return 0, false
	}
	if _, err := strconv.Atoi(n); err != nil {
		return 0, false
	}
	pid, err := strconv.Atoi(p)
	return pid, err == nil && pid > 0
}

// alive reports whether process pid runs on this host.
func alive(pid int) bool {
	err := syscall.Kill(pid, 0)
	return err == nil || errors.Is(err, syscall.EPERM)
}

// RemoveLeftovers destroys and undefines the domains on c's daemon that a
// snaplab process on this host defined and that outlived it (killed
// before it could clean up); it returns how many it removed.
func RemoveLeftovers(ctx context.Context, c *conn) (int, error) {
	var doms []golibvirt.Domain
	if err := c.do(ctx, "list domains", func(l *golibvirt.Libvirt) (err error) {
		doms, _, err = l.ConnectListAllDomains(1, 0)
		return err
	}); err != nil {
		return 0, err
	}
	n := 0
	var errs []error
	for _, d := range doms {
		pid, ok := ownerPid(d.Name)
		if !ok || alive(pid) {
			continue
		}
		if err := c.do(ctx, "destroy leftover "+d.Name, func(l *golibvirt.Libvirt) error {
			return l.DomainDestroyFlags(d, golibvirt.DomainDestroyDefault)
		}); err != nil && !isNotRunning(err) {
			errs = append(errs, err)
			continue
		}
		if err := c.do(ctx, "undefine leftover "+d.Name, func(l *golibvirt.Libvirt) error {
			return l.DomainUndefineFlags(d, 0)
		}); err != nil && !golibvirt.IsNotFound(err) {
			errs = append(errs, err)
			continue
		}
		n++
	}
	if len(errs) > 0 {
		return n, fmt.Errorf("removing leftover domains: %w", errors.Join(errs...))
	}
	return n, nil
}

// Domains lists the names of the domains defined on the daemon at uri
// (for checks that nothing was left behind).
func Domains(ctx context.Context, uri string) ([]string, error) {
	c, err := openConn(ctx, uri, dialURI(uri), defaultOptions().CallTimeout, func(string, ...any) {})
	if err != nil {
		return nil, err
	}
	defer c.close()
	var doms []golibvirt.Domain
	if err := c.do(ctx, "list domains", func(l *golibvirt.Libvirt) (err error) {
		doms, _, err = l.ConnectListAllDomains(1, 0)
		return err
	}); err != nil {
		return nil, err
	}
	var names []string
	for _, d := range doms {
		names = append(names, d.Name)
	}
	return names, nil
}
