package script

import (
	"strings"
	"testing"
)

func TestParseData(t *testing.T) {
	sc, err := Parse("d.scn", "disk a 1MiB\nwrite a 4KiB 8KiB data=dir/x@y.log@1536 fua\nwrite a 0 512 data=plain\n")
	if err != nil {
		t.Fatal(err)
	}
	st := sc.Steps[1]
	if st.DataFile != "dir/x@y.log" || st.DataOff != 1536 || st.Pattern != "" || !st.FUA || st.Len != 8192 {
		t.Fatalf("%+v", st)
	}
	if st := sc.Steps[2]; st.DataFile != "plain" || st.DataOff != 0 {
		t.Fatalf("%+v", st)
	}
	sc.Dir = "/s"
	if p := sc.DataPath(&sc.Steps[1]); p != "/s/dir/x@y.log" {
		t.Fatal(p)
	}
	for _, c := range []struct{ line, want string }{
		{"write a 0 4KiB data=f pattern=A", "pattern= or data=, not both"},
		{"write a 0 4KiB data=f buffered", "data= is for direct writes"},
		{"write a 0 4KiB data=f@x", `invalid offset "x" after @`},
		{"write a 0 4KiB data=@0", "want data=PATH@OFFSET"},
		{"read a 0 4KiB data=f", "data= is for writes"},
		{"write a 0 4KiB", "missing pattern=NAME (or data=PATH@OFFSET)"},
	} {
		_, err := Parse("d.scn", "disk a 1MiB\n"+c.line+"\n")
		if err == nil || !strings.Contains(err.Error(), c.want) || !strings.HasPrefix(err.Error(), "d.scn:2") {
			t.Errorf("%s: got %v, want %q", c.line, err, c.want)
		}
	}
}
