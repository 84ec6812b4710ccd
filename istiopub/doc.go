// Package istiopub keeps, in the local cluster, the Istio resources that
// describe the other networks gossip reports, so that the cluster's istiod
// learns their gateways and services without credentials for their API
// servers.
//
// For each remote network it writes a Gateway API Gateway of class
// istio-remote (what istiod reads to learn a network's gateways); for each
// remote service without a Service of its own here, a ServiceEntry and
// address-less WorkloadEntries in that network, one per subset and
// locality, weighted by the healthy endpoint count; for a remote service
// with a same-named local Service, only WorkloadEntries that Service
// selects. Every object carries [LabelManagedBy]; the publisher deletes the
// ones it no longer wants and never touches objects without the label.
//
// [Translate] is the pure translation; [Publisher] runs it under a
// Kubernetes Lease (one writer per cluster), on every gossip and local
// change, holding a vanished network for a grace period.
package istiopub
