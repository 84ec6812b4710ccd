package discovery

import (
	"errors"
	"fmt"
	"slices"
)

// visibility is how a resource's exportTo list exposes it to one
// namespace. Istio orders what a namespace sees by it: private resources
// first, then those exported to it by name, then public ones.
type visibility int

const (
	hidden  visibility = iota // not visible
	private                   // ".", or its own namespace by name, from its own namespace
	named                     // exported to the namespace by name
	public                    // "*", or an empty list
)

// exportVisibility is the one exportTo rule of every resource kind, as
// Istio's PushContext applies it: an empty list or one holding "*" is
// public (whatever else it holds), else one holding "~" is hidden from
// every namespace, else the resource is private to its own namespace own
// through "." or own's name, and exported by name to the other namespaces
// listed. It returns how a resource of namespace own with list exportTo
// is seen from namespace from. Names are compared as written: Kubernetes
// namespaces are lower case.
func exportVisibility(exportTo []string, own, from string) visibility {
	switch {
	case len(exportTo) == 0 || slices.Contains(exportTo, "*"):
		return public
	case slices.Contains(exportTo, "~"):
		return hidden
	case from == own && (slices.Contains(exportTo, ".") || slices.Contains(exportTo, own)):
		return private
	case slices.Contains(exportTo, from):
		return named
	}
	return hidden
}

// checkExportTo reports why an exportTo list of a resource of namespace
// own is one Istio's validation refuses (ValidateExportTo): each entry
// must be "*", ".", a namespace name or, for a ServiceEntry (noneOK), "~";
// "*" and "~" only alone; no namespace twice, "." counting as own. Such a
// list would be read one way here and refused, or read another way, by
// istiod.
func checkExportTo(exportTo []string, own string, noneOK bool) error {
	seen := make(map[string]bool, len(exportTo))
	for i, e := range exportTo {
		key := e
		switch e {
		case "*":
		case "~":
			if !noneOK {
				return fmt.Errorf("exportTo[%d]: \"~\" is for ServiceEntries only", i)
			}
		case ".":
			key = own
		default:
			if err := checkLabel(e); err != nil {
				return fmt.Errorf("exportTo[%d]: %q is neither \"*\", \".\" nor a namespace: %w", i, e, err)
			}
		}
		if seen[key] {
			return fmt.Errorf("exportTo[%d]: namespace %q is listed twice", i, key)
		}
		seen[key] = true
	}
	if len(exportTo) > 1 && (seen["*"] || seen["~"]) {
		return errors.New(`exportTo: "*" and "~" cannot be combined with other entries`)
	}
	return nil
}
