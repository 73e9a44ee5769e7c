package main

import "flag"

// parseFlags parses a subcommand's arguments with flags and operands in
// any order, as people type them: "serve SCN --socket P" is
// "serve --socket P SCN". Go's flag package stops at the first operand;
// this parses on after each one. "--" ends the flags: everything after it
// is an operand, even if it starts with "-". fs.Args() holds the operands
// in the order given.
func parseFlags(fs *flag.FlagSet, args []string) error {
	var operands []string
	for {
		if err := fs.Parse(args); err != nil {
			return err
		}
		rest := fs.Args()
		if len(rest) == 0 {
			break
		}
		if used := len(args) - len(rest); used > 0 && args[used-1] == "--" {
			operands = append(operands, rest...)
			break
		}
		operands = append(operands, rest[0])
		args = rest[1:]
	}
	return fs.Parse(append([]string{"--"}, operands...))
}
