package cli_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"html"
	"image"
	"image/png"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"

	"snaplab/sim/timeline"
)

// The timeline (snaplab show) in a real browser: Debian's chromium,
// headless, loads the page with #selfcheck, whose script writes where each
// lane, marker, tick, handover and the divergence is drawn and whether it
// is visible; a screenshot shows the colours really reach the pixels.
var _ = Describe("snaplab show: the timeline in a real browser", Label("timeline"), func() {
	var chromium string

	BeforeEach(func() {
		for _, name := range []string{"chromium", "chromium-browser"} {
			if p, err := exec.LookPath(name); err == nil {
				chromium = p
				break
			}
		}
		if chromium == "" {
			Fail("chromium is not installed: make deps installs it (scripts/deps.sh, Debian's chromium package); this spec needs a real browser")
		}
	})

	It("draws every device's lane, a marker per control command and the handover of the seed call sequence", func(ctx SpecContext) {
		dir := GinkgoT().TempDir()
		scn := filepath.Join("..", "library", "seed-call-sequence.scn")
		r := snaplab(ctx, ".", nil, "run", "-record", filepath.Join(dir, "rec"), scn)
		Expect(r.Code).To(Equal(0), r.Stderr)
		rec := filepath.Join(dir, "rec", "seed-call-sequence.jsonl")
		page := filepath.Join(dir, "seed.html")
		r = snaplab(ctx, ".", nil, "show", "-o", page, rec)
		Expect(r.Code).To(Equal(0), r.Stderr)

		sc := selfCheck(ctx, chromium, dir, page)
		devices, commands := scenarioDevices(scn)
		Expect(devices).To(Equal([]string{"origin", "cow", "base", "snap1", "snap2"}))
		expectLanes(sc, devices, 1)
		expectMarkers(sc, commands)
		Expect(sc.visible("handover")).NotTo(BeEmpty(), "the handover line is not visible")
		Expect(sc.visible("divergence")).To(BeEmpty(), "one recording has no divergence")
		// The async read issued while snap1 was suspended: a waited tick.
		waited := 0
		for _, it := range sc.visible("tick") {
			if strings.Contains(it.Class, "io-waited") && it.Device == "" && it.Line == 22 {
				waited++
			}
		}
		Expect(waited).To(Equal(1), "the read of line 22 (issued while snap1 was suspended) is not drawn as waited")

		pix := screenshot(ctx, chromium, dir, page, sc.Page)
		// Colours count in the chart only: above the legend, which has
		// a swatch of each.
		chart, lanes := sc.areas()
		for _, c := range []struct{ name, hex string }{
			{"live", timeline.ColourLive}, {"suspended", timeline.ColourSuspended},
			{"handed over", timeline.ColourHandedOver}, {"disk", timeline.ColourDisk},
			{"EIO", timeline.ColourEIO}, {"kcopyd copy", timeline.ColourCopy},
		} {
			Expect(countColour(pix, c.hex, lanes)).To(BeNumerically(">=", 20), "the %s colour %s is not in the lanes of the screenshot", c.name, c.hex)
		}
		Expect(countColour(pix, timeline.ColourDivergence, chart)).To(BeZero(), "a divergence colour with one recording")
	})

	It("marks the first divergence of the same scenario under mainline and seed semantics", func(ctx SpecContext) {
		dir := GinkgoT().TempDir()
		scn := filepath.Join("..", "library", "h4-remove-source-cancels-handover.scn")
		r := snaplab(ctx, ".", nil, "run", "-record", filepath.Join(dir, "mainline"), scn)
		Expect(r.Code).To(Equal(0), r.Stderr)
		// The scenario pins mainline: under the seed's rules the source's
		// removal hands over instead of cancelling, and the run fails there.
		r = snaplab(ctx, ".", nil, "run", "-semantics", "seed", "-record", filepath.Join(dir, "seed"), scn)
		Expect(r.Code).To(Equal(1), r.Stdout+r.Stderr)
		name := "h4-remove-source-cancels-handover.jsonl"
		page := filepath.Join(dir, "h4.html")
		r = snaplab(ctx, ".", nil, "show", filepath.Join(dir, "mainline", name), filepath.Join(dir, "seed", name), "-o", page)
		Expect(r.Code).To(Equal(0), r.Stderr)
		Expect(r.Stderr).To(ContainSubstring("first divergence: line 15"))

		sc := selfCheck(ctx, chromium, dir, page)
		devices, commands := scenarioDevices(scn)
		expectLanes(sc, devices, 2)
		expectMarkers(sc, commands)
		// The seed run's handover (at the source's removal, inside the
		// divergence band).
		Expect(sc.visible("handover")).To(HaveLen(1), "handovers: %+v", sc.all("handover"))
		div := sc.visible("divergence")
		Expect(div).To(HaveLen(1), "the divergence is not visible: %+v", sc.all("divergence"))
		Expect(div[0].Line).To(Equal(15))
		Expect(div[0].Width).To(BeNumerically(">", 0))
		// The band crosses both groups' lanes.
		var top, bottom = 1 << 30, 0
		for _, l := range sc.visible("lane") {
			top, bottom = min(top, l.Y), max(bottom, l.Y+l.Height)
		}
		Expect(div[0].Y).To(BeNumerically("<=", top))
		Expect(div[0].Y + div[0].Height).To(BeNumerically(">=", bottom-20))

		pix := screenshot(ctx, chromium, dir, page, sc.Page)
		chart, lanes := sc.areas()
		Expect(countColour(pix, timeline.ColourDivergence, chart)).To(BeNumerically(">=", 200), "the divergence colour %s is not in the chart of the screenshot", timeline.ColourDivergence)
		for _, c := range []struct{ name, hex string }{
			{"live", timeline.ColourLive}, {"loaded", timeline.ColourLoaded},
			{"invalid", timeline.ColourInvalid},
		} {
			Expect(countColour(pix, c.hex, lanes)).To(BeNumerically(">=", 20), "the %s colour %s is not in the lanes of the screenshot", c.name, c.hex)
		}
	})
})

// checkItem is one element the page's self-check measured.
type checkItem struct {
	Kind    string `json:"kind"`
	Class   string `json:"class"`
	Device  string `json:"device"`
	Group   string `json:"group"`
	Line    int    `json:"line"`
	Verb    string `json:"verb"`
	X       int    `json:"x"`
	Y       int    `json:"y"`
	Width   int    `json:"width"`
	Height  int    `json:"height"`
	Visible bool   `json:"visible"`
}

type checkResult struct {
	Page struct {
		Width  int `json:"width"`
		Height int `json:"height"`
	} `json:"page"`
	Items []checkItem `json:"items"`
}

func (c *checkResult) all(kind string) []checkItem {
	var out []checkItem
	for _, it := range c.Items {
		if it.Kind == kind {
			out = append(out, it)
		}
	}
	return out
}

// visible are the items of a kind drawn visible, with a size, inside the
// page.
func (c *checkResult) visible(kind string) []checkItem {
	var out []checkItem
	for _, it := range c.all(kind) {
		if it.Visible && it.Width > 0 && it.Height > 0 && it.X >= 0 && it.Y >= 0 &&
			it.X+it.Width <= c.Page.Width && it.Y+it.Height <= c.Page.Height {
			out = append(out, it)
		}
	}
	return out
}

// areas are the chart (the page above the legend: the axis, the
// divergence label and the lanes) and the lanes alone.
func (c *checkResult) areas() (chart, lanes image.Rectangle) {
	ls := c.visible("lane")
	Expect(ls).NotTo(BeEmpty())
	lanes = image.Rect(ls[0].X, ls[0].Y, ls[0].X+ls[0].Width, ls[0].Y+ls[0].Height)
	for _, l := range ls[1:] {
		lanes = lanes.Union(image.Rect(l.X, l.Y, l.X+l.Width, l.Y+l.Height))
	}
	return image.Rect(0, 0, c.Page.Width, lanes.Max.Y), lanes
}

var selfCheckRE = regexp.MustCompile(`(?s)<pre id="selfcheck-result"[^>]*>(.*?)</pre>`)

// selfCheck loads page#selfcheck in headless chromium and returns what
// its script measured.
func selfCheck(ctx context.Context, chromium, dir, page string) *checkResult {
	ctx, cancel := context.WithTimeout(ctx, 90*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
		"--user-data-dir="+filepath.Join(dir, "chromium-profile"), "--window-size=1400,900",
		"--dump-dom", "file://"+page+"#selfcheck")
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	Expect(cmd.Run()).To(Succeed(), "chromium --dump-dom: %s", errb.String())
	m := selfCheckRE.FindStringSubmatch(out.String())
	Expect(m).NotTo(BeNil(), "no selfcheck result in the page chromium dumped:\n%.2000s", out.String())
	var res checkResult
	Expect(json.Unmarshal([]byte(html.UnescapeString(m[1])), &res)).To(Succeed(), m[1])
	Expect(res.Page.Width).To(BeNumerically(">", 0))
	Expect(res.Items).NotTo(BeEmpty())
	return &res
}

// scenarioDevices reads a scenario's disks and created dm devices, in
// order, and the line numbers of its dmsetup commands.
func scenarioDevices(scn string) (devices []string, dmsetupLines []int) {
	b, err := os.ReadFile(scn)
	Expect(err).NotTo(HaveOccurred())
	seen := map[string]bool{}
	for i, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		switch {
		case len(f) >= 2 && f[0] == "disk":
			devices = append(devices, f[1])
		case len(f) >= 3 && f[0] == "dmsetup":
			dmsetupLines = append(dmsetupLines, i+1)
			if f[1] == "create" && !seen[f[2]] {
				seen[f[2]] = true
				devices = append(devices, f[2])
			}
		}
	}
	return devices, dmsetupLines
}

// expectLanes: every device has a visible lane, of nonzero size inside
// the page, in each of groups recordings.
func expectLanes(sc *checkResult, devices []string, groups int) {
	for _, d := range devices {
		n := 0
		for _, l := range sc.visible("lane") {
			if l.Device == d {
				n++
			}
		}
		Expect(n).To(Equal(groups), "device %s: %d visible lanes, want %d (lanes measured: %+v)", d, n, groups, sc.all("lane"))
	}
}

// expectMarkers: each dmsetup line has a visible marker.
func expectMarkers(sc *checkResult, lines []int) {
	markers := sc.visible("marker")
	for _, line := range lines {
		found := false
		for _, m := range markers {
			if m.Line == line {
				found = true
				break
			}
		}
		Expect(found).To(BeTrue(), "no visible marker for the dmsetup command of line %d", line)
	}
}

// screenshot takes a PNG of the whole page and decodes it.
func screenshot(ctx context.Context, chromium, dir, page string, size struct {
	Width  int `json:"width"`
	Height int `json:"height"`
}) image.Image {
	ctx, cancel := context.WithTimeout(ctx, 90*time.Second)
	defer cancel()
	out := filepath.Join(dir, strings.TrimSuffix(filepath.Base(page), ".html")+".png")
	w, h := min(size.Width+20, 4000), min(size.Height+20, 4000)
	cmd := exec.CommandContext(ctx, chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
		"--user-data-dir="+filepath.Join(dir, "chromium-profile"), "--force-device-scale-factor=1",
		"--window-size="+strconv.Itoa(w)+","+strconv.Itoa(h), "--screenshot="+out, "file://"+page)
	var errb bytes.Buffer
	cmd.Stderr = &errb
	Expect(cmd.Run()).To(Succeed(), "chromium --screenshot: %s", errb.String())
	f, err := os.Open(out)
	Expect(err).NotTo(HaveOccurred(), "chromium wrote no screenshot: %s", errb.String())
	defer f.Close()
	img, err := png.Decode(f)
	Expect(err).NotTo(HaveOccurred())
	AddReportEntry("screenshot", out)
	return img
}

// countColour counts the pixels of colour hex ("#rrggbb"), give or take 3
// in each channel, in area.
func countColour(img image.Image, hex string, area image.Rectangle) int {
	var want [3]int
	_, err := fmt.Sscanf(hex, "#%02x%02x%02x", &want[0], &want[1], &want[2])
	Expect(err).NotTo(HaveOccurred())
	n := 0
	b := img.Bounds().Intersect(area)
	for y := b.Min.Y; y < b.Max.Y; y++ {
		for x := b.Min.X; x < b.Max.X; x++ {
			r, g, bl, _ := img.At(x, y).RGBA()
			got := [3]int{int(r >> 8), int(g >> 8), int(bl >> 8)}
			ok := true
			for i := range got {
				if d := got[i] - want[i]; d < -3 || d > 3 {
					ok = false
				}
			}
			if ok {
				n++
			}
		}
	}
	return n
}
