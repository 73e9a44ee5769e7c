package world

import (
	"fmt"
	"reflect"
	"strings"
	"testing"
)

type log struct{ lines []string }

func (l *log) Choice(t Time, site string, n, pick int) {
	l.lines = append(l.lines, fmt.Sprintf("%d choice %s %d %d", t, site, n, pick))
}
func (l *log) Event(t Time, site string) {
	l.lines = append(l.lines, fmt.Sprintf("%d event %s", t, site))
}

func scenario(seed uint64) (order []string, trace []string) {
	w := New(seed)
	l := &log{}
	w.SetObserver(l)
	for i := 0; i < 6; i++ {
		name := fmt.Sprintf("e%d", i)
		w.After(Time(i%3)*Microsecond, "io."+name, func() {
			order = append(order, name)
			if name == "e1" {
				w.After(0, "io.child", func() { order = append(order, "child") })
			}
		})
	}
	w.Run()
	return order, l.lines
}

func TestSeedZeroIsFIFO(t *testing.T) {
	order, _ := scenario(0)
	want := []string{"e0", "e3", "e1", "e4", "child", "e2", "e5"}
	if !reflect.DeepEqual(order, want) {
		t.Fatalf("seed 0 order %v, want FIFO %v", order, want)
	}
}

func TestSameSeedSameTrace(t *testing.T) {
	for _, seed := range []uint64{1, 2, 99} {
		_, a := scenario(seed)
		_, b := scenario(seed)
		if !reflect.DeepEqual(a, b) {
			t.Fatalf("seed %d: traces differ", seed)
		}
	}
}

func TestSeedsExploreOrders(t *testing.T) {
	seen := map[string]bool{}
	for seed := uint64(1); seed <= 30; seed++ {
		o, _ := scenario(seed)
		seen[strings.Join(o, ",")] = true
	}
	if len(seen) < 5 {
		t.Fatalf("30 seeds produced only %d orders", len(seen))
	}
}

type fixedTape struct{ picks []int }

func (f *fixedTape) Next(site string, n int) (int, bool, error) {
	if len(f.picks) == 0 {
		return 0, false, nil
	}
	p := f.picks[0]
	f.picks = f.picks[1:]
	if p >= n {
		return 0, false, fmt.Errorf("pick %d out of range %d at %s", p, n, site)
	}
	return p, true, nil
}

func TestTapeForcesPicks(t *testing.T) {
	w := New(0)
	var got []string
	w.SetTape(&fixedTape{picks: []int{2}})
	for _, n := range []string{"a", "b", "c"} {
		n := n
		w.After(0, "x."+n, func() { got = append(got, n) })
	}
	w.Run()
	if strings.Join(got, "") != "cab" {
		t.Fatalf("got %v", got)
	}
}

func TestRunUntilStuck(t *testing.T) {
	w := New(0)
	err := w.RunUntil("never", func() bool { return false })
	if _, ok := err.(*ErrStuck); !ok || !strings.Contains(err.Error(), "never") {
		t.Fatalf("err = %v", err)
	}
}
