// Package kubetest runs a real etcd and kube-apiserver on loopback for
// tests, so that code talking to Kubernetes is tested against the real API
// server rather than a fake clientset. It needs only the standard library
// and sigs.k8s.io/yaml: tests talk to the server with client-go through
// Server.Kubeconfig, or with plain HTTP through Server.Do.
//
// The binaries: kube-apiserver from $EWGATE_KUBE_APISERVER, else
// /var/cache/ewgate/kube-apiserver-v1.36.3-b2 (what .ci/kube-apiserver.sh
// builds); etcd from $EWGATE_ETCD, else etcd on $PATH (Debian's
// etcd-server). Where one is missing, tests skip and say how to get it,
// except with CI=true, where they fail: CI must never skip silently.
//
// A server takes a few seconds to start (etcd, kube-apiserver, Istio's
// CRDs), so a test package starts one for all its tests:
//
//	var kube kubetest.Shared
//
//	func TestMain(m *testing.M) { os.Exit(kube.Run(m)) }
//
//	func TestSomething(t *testing.T) {
//		srv := kube.Get(t) // skips or fails as above
//		...
//	}
//
// Tests that need a server of their own (two clusters, or stopping the API
// server while others use it) call Start(t); it is stopped when the test
// ends. Every server has its own ports, data directory and credentials, so
// any number run at once.
//
// What a server has: the admin token (group system:masters) in a static
// token file, RBAC authorization, service-account signing keys, a serving
// certificate from a CA of its own, the ServiceAccount "default" in the
// namespace "default" (there is no controller manager to create it, and
// pods need it), and Istio's CRDs from the istio.io/api module and the
// Gateway API's standard CRDs from the sigs.k8s.io/gateway-api module the
// repository requires, Established. There is no controller manager,
// scheduler or kubelet: nothing reacts to the objects tests create, so
// tests set pod status themselves through the status subresource.
package kubetest
