//go:build !race

package apiguard

const raceEnabled = false
