package report

import (
	"maps"
	"slices"
	"time"
)

// binSteps are the resolutions the scan counts events at; each divides
// the next and an hour.
var binSteps = []time.Duration{time.Second, 10 * time.Second, time.Minute, 10 * time.Minute, time.Hour}

// maxBins bounds the scan's timeline memory: past it, the bins merge into
// the next coarser step.
const maxBins = 20_000

// bins counts events by kind in buckets as fine as the journal's length
// allows, so the chart of a 5-minute period has seconds to draw and a
// year's does not hold a million buckets.
type bins struct {
	step int
	m    map[time.Time]map[string]int
}

func (b *bins) add(t time.Time, kind string, n int) {
	if b.m == nil {
		b.m = map[time.Time]map[string]int{}
	}
	k := t.Truncate(binSteps[b.step])
	c := b.m[k]
	if c == nil {
		c = map[string]int{}
		b.m[k] = c
	}
	c[kind] += n
	for len(b.m) > maxBins && b.step < len(binSteps)-1 {
		b.step++
		old := b.m
		b.m = map[time.Time]map[string]int{}
		for k, c := range old {
			nk := k.Truncate(binSteps[b.step])
			if b.m[nk] == nil {
				b.m[nk] = map[string]int{}
			}
			for kind, n := range c {
				b.m[nk][kind] += n
			}
		}
	}
}

// chartSteps are the timeline's bucket sizes, finest first.
var chartSteps = []time.Duration{time.Second, 5 * time.Second, 10 * time.Second, 30 * time.Second, time.Minute, 5 * time.Minute,
	10 * time.Minute, 30 * time.Minute, time.Hour, 2 * time.Hour, 6 * time.Hour, 12 * time.Hour, 24 * time.Hour, 7 * 24 * time.Hour}

// maxBars is the most buckets the timeline draws.
const maxBars = 400

// chartBucket picks the finest bucket that the bins' resolution allows
// and that draws at most maxBars bars over span.
func chartBucket(span, res time.Duration) time.Duration {
	for _, b := range chartSteps {
		if b >= res && b%res == 0 && span/b < maxBars {
			return b
		}
	}
	return 30 * 24 * time.Hour
}

// timeline sums the bins into the chart's buckets over [from, to).
func (s *scan) timeline(from, to time.Time) Timeline {
	res := binSteps[s.bins.step]
	bucket := chartBucket(to.Sub(from), res)
	tl := Timeline{BucketSeconds: bucket.Seconds(), Start: from.Truncate(bucket), Buckets: []Bucket{}}
	sums := map[time.Time]map[string]int{}
	for k, c := range s.bins.m {
		if k.Before(tl.Start) || !k.Before(to) {
			continue
		}
		bk := k.Truncate(bucket)
		if sums[bk] == nil {
			sums[bk] = map[string]int{}
		}
		for kind, n := range c {
			sums[bk][kind] += n
		}
	}
	for _, k := range slices.SortedFunc(maps.Keys(sums), time.Time.Compare) {
		tl.Buckets = append(tl.Buckets, Bucket{Start: k, Counts: sums[k]})
	}
	return tl
}
