//go:build snaplab_plant

package main

import (
	"flag"
	"fmt"
	"strings"

	"snaplab/sim/plant"
)

// plantOption is `snaplab explore --plant NAME` (a binary built with -tags
// snaplab_plant): the planted bug (sim/plant) the campaign must find.
type plantOption struct{ name *string }

func plantFlag(fs *flag.FlagSet) plantOption {
	var b strings.Builder
	b.WriteString("plant one deliberate defect in the simulator, which the campaign must find; one of:")
	for _, x := range plant.Bugs {
		fmt.Fprintf(&b, "\n  %s: %s", x.Bug, x.What)
	}
	return plantOption{name: fs.String("plant", "", b.String())}
}

// apply plants the named bug (none when the flag was not given).
func (o plantOption) apply() error {
	if err := plant.Set(*o.name); err != nil {
		return fmt.Errorf("--plant: %w", err)
	}
	return nil
}
