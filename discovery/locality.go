package discovery

import "strings"

// The labels a locality is read from, with Istio's meaning.
const (
	// RegionLabel, ZoneLabel and SubzoneLabel are a node's topology
	// labels: the parts of the locality of its pods.
	RegionLabel  = "topology.kubernetes.io/region"
	ZoneLabel    = "topology.kubernetes.io/zone"
	SubzoneLabel = "topology.istio.io/subzone"
	// LocalityLabel on a pod overrides its node's locality; label values
	// cannot hold '/', so it is written "region.zone.subzone".
	LocalityLabel = "istio-locality"
)

// LocalityFromLabels returns the locality, "region/zone/subzone", that
// Istio gives a pod with labels pod on a node with labels node
// (getPodLocality): the pod's LocalityLabel, else the node's topology
// labels. Empty trailing parts are left out, as Istio writes a locality
// (LocalityToString), so that "eu/eu-1" from a node without a subzone is
// the same string as a WorkloadEntry's "eu/eu-1"; "" when neither gives
// one. It is the one reader of these labels, for endpoints (the
// Kubernetes source) and for the gateway itself (its --node-labels).
func LocalityFromLabels(pod, node map[string]string) string {
	if l := pod[LocalityLabel]; l != "" {
		return strings.TrimRight(strings.ReplaceAll(l, ".", "/"), "/")
	}
	return strings.TrimRight(node[RegionLabel]+"/"+node[ZoneLabel]+"/"+node[SubzoneLabel], "/")
}
