package discovery

import (
	"fmt"
)

// ExportLabel is the label of a ServiceEntry (later of a Kubernetes
// Service) that says whether the service's endpoints may be reached from
// other networks: "true" opts in, "false" opts out, and without it the
// node's ExportDefault applies. It is a label, not an annotation, so that
// `kubectl get serviceentries -l ewgate.io/export=true` lists what leaves
// a network.
const ExportLabel = "ewgate.io/export"

// Export is a service's own export choice, from ExportLabel.
type Export uint8

// A service's export choices.
const (
	ExportUnset Export = iota // no label: the node's ExportDefault decides
	ExportYes                 // "true"
	ExportNo                  // "false"
)

// ExportDefault is a node's export rule for services without ExportLabel.
type ExportDefault string

// The node export defaults.
const (
	// ExportAll exports every service that a Gateway server admits, as
	// Istio does. It is the default.
	ExportAll ExportDefault = "all"
	// ExportNone exports only services labelled ewgate.io/export=true.
	ExportNone ExportDefault = "none"
)

// ParseExportDefault parses "all" (also "") or "none".
func ParseExportDefault(s string) (ExportDefault, error) {
	switch ExportDefault(s) {
	case "", ExportAll:
		return ExportAll, nil
	case ExportNone:
		return ExportNone, nil
	}
	return "", fmt.Errorf("%q: want all or none", s)
}

// ParseExport reads a resource's export choice from its labels and
// annotations. The label's value must be "true" or "false"; the key set
// as an annotation is an error, so that an operator who wrote one is told
// instead of exporting a service by default.
func ParseExport(labels, annotations map[string]string) (Export, error) {
	if _, ok := annotations[ExportLabel]; ok {
		return ExportUnset, fmt.Errorf("metadata.annotations[%s]: ewgate reads it as a label: move it to metadata.labels", ExportLabel)
	}
	v, ok := labels[ExportLabel]
	switch {
	case !ok:
		return ExportUnset, nil
	case v == "true":
		return ExportYes, nil
	case v == "false":
		return ExportNo, nil
	}
	return ExportUnset, fmt.Errorf("metadata.labels[%s]: %q: want \"true\" or \"false\"", ExportLabel, v)
}

// exported reports whether svc's endpoints may be reached from other
// networks under the node default d. Services defined by other networks
// have no endpoints here; their own network decided.
func (svc *Service) exported(d ExportDefault) bool {
	if svc.Origin.Remote() {
		return true
	}
	switch svc.Export {
	case ExportYes:
		return true
	case ExportNo:
		return false
	}
	return d != ExportNone
}
