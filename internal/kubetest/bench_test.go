package kubetest

import "testing"

// BenchmarkStart measures a whole start: etcd, kube-apiserver until
// /readyz, the default ServiceAccount and Istio's CRDs Established. The
// stop after each iteration is not timed.
//
//	go test -run '^$' -bench . -benchtime 5x ./internal/kubetest
func BenchmarkStart(b *testing.B) {
	bin, err := findBinaries()
	if err != nil {
		skipOrFatal(b, err)
	}
	for b.Loop() {
		s, err := launch(bin, b.TempDir())
		if err != nil {
			b.Fatal(err)
		}
		b.StopTimer()
		s.close()
		b.StartTimer()
	}
}

// BenchmarkRestart measures Stop and Start of the API server (etcd and
// its data stay), as a test that takes the API server away does.
func BenchmarkRestart(b *testing.B) {
	s := Start(b)
	for b.Loop() {
		s.Restart(b)
	}
}
