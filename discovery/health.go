package discovery

import (
	"cmp"
	"slices"
)

// NetworkHealth combines what several gateways of one network report for
// one service port and subset into the network's healthy counts: per
// locality, the minimum over the reports, a locality missing from a report
// counting 0. An endpoint is healthy for other networks only while no
// gateway of its network ejects it, as a Consul service instance is
// critical when any of its checks is.
//
// Each gateway ejects on its own failures and clock, so any rule that lets
// one report outvote another (the maximum, the freshest) turns an ejection
// on one gateway into nothing, or into health that comes and goes as the
// reports alternate. The minimum uses no clocks, changes only when a
// report does, and is never above what a gateway that saw the endpoint
// fail says. It errs low for as long as one gateway has not yet seen an
// added endpoint. Reports are in canonical order (by locality, no zero
// counts); so is the result. With no reports it returns nil.
func NetworkHealth(reports ...[]LocalityCount) []LocalityCount {
	if len(reports) == 0 {
		return nil
	}
	out := slices.Clone(reports[0])
	for _, r := range reports[1:] {
		kept := out[:0]
		for _, lc := range out {
			i, ok := slices.BinarySearchFunc(r, lc.Locality, func(x LocalityCount, loc string) int { return cmp.Compare(x.Locality, loc) })
			if !ok {
				continue // 0 in this report
			}
			lc.Count = min(lc.Count, r[i].Count)
			if lc.Count > 0 {
				kept = append(kept, lc)
			}
		}
		out = kept
	}
	if len(out) == 0 {
		return nil
	}
	return out
}
