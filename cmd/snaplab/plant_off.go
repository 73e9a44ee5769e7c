//go:build !snaplab_plant

package main

import "flag"

// plantOption is `snaplab explore --plant`, which only a binary built with
// -tags snaplab_plant has: this one registers no flag, so --plant is an
// unknown flag here.
type plantOption struct{}

func plantFlag(fs *flag.FlagSet) plantOption { return plantOption{} }

// apply plants nothing: no bug can be planted in this build.
func (plantOption) apply() error { return nil }
