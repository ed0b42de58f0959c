// Package fuzz holds dyad's fuzz targets, one file per parser, with their
// seed corpora under testdata/fuzz/<Target>/. `go test ./fuzz` replays the
// corpora; `make fuzz` fuzzes each target in turn. README.md says how to add
// a target.
package fuzz
