package proto

import (
	"bufio"
	"context"
	"encoding/json"
	"net"
	"strings"
	"testing"
	"time"
)

// TestResume plays a restored agent: it never announces readiness and
// waits for requests. Resume must make the client ready with the answer.
func TestResume(t *testing.T) {
	host, guest := net.Pipe()
	c := NewClient(host)
	defer c.Close()
	got := make(chan Request, 1)
	go func() {
		line, err := bufio.NewReader(guest).ReadBytes('\n')
		if err != nil {
			return
		}
		req, err := DecodeRequest(line)
		if err != nil {
			return
		}
		got <- req
		b, _ := json.Marshal(Response{ID: req.ID, Op: req.Op, Errno: "OK", Kernel: "6.1.0-restored", Uptime: 7.5})
		guest.Write(append(b, '\n'))
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if c.IsReady() {
		t.Fatal("ready before any message")
	}
	before := time.Now().UnixNano()
	r, err := c.Resume(ctx)
	if err != nil {
		t.Fatal(err)
	}
	req := <-got
	if req.Op != OpResume || req.ClockNS < before || req.ClockNS > time.Now().UnixNano() {
		t.Errorf("request %+v: want op resume with the host's clock (sent after %d)", req, before)
	}
	if r.Op != OpReady || r.ID != 0 || r.Kernel != "6.1.0-restored" || r.Uptime != 7.5 {
		t.Errorf("Resume returned %+v, want the answer as a ready message", r)
	}
	if !c.IsReady() {
		t.Error("IsReady false after Resume")
	}
	ready, err := c.Ready(ctx)
	if err != nil || ready.Kernel != "6.1.0-restored" || ready.Op != OpReady {
		t.Errorf("Ready after Resume: %+v %v", ready, err)
	}
}

// TestResumeRefused: an agent that fails resume leaves the client not ready.
func TestResumeRefused(t *testing.T) {
	host, guest := net.Pipe()
	c := NewClient(host)
	defer c.Close()
	go func() {
		line, err := bufio.NewReader(guest).ReadBytes('\n')
		if err != nil {
			return
		}
		req, _ := DecodeRequest(line)
		b, _ := json.Marshal(Response{ID: req.ID, Op: req.Op, Errno: "EPERM", Error: "setting the wall clock", Phase: "clock"})
		guest.Write(append(b, '\n'))
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err := c.Resume(ctx)
	if err == nil || !strings.Contains(err.Error(), "EPERM") {
		t.Fatalf("Resume = %v, want the agent's EPERM", err)
	}
	if c.IsReady() {
		t.Error("ready after a refused resume")
	}
}
