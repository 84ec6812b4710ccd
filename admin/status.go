package admin

import (
	"net/http"
)

// StatusPath is the readiness path of Istio's gateways on their status
// port (15021), which cloud load balancers and kubelets probe.
const StatusPath = "/healthz/ready"

// StatusHandler returns the handler of the status port: GET StatusPath
// answers 200 "ready" when ready returns true and 503 "not ready"
// otherwise (nil ready: never ready), and /healthz 200 while the process
// runs. Nothing else is served: the port is exposed beyond the node, so
// it carries no metrics, debug views or readiness detail (which can hold
// API server errors), unlike the admin Handler.
func StatusHandler(ready func() bool) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		w.Write([]byte("ok\n"))
	})
	mux.HandleFunc("GET "+StatusPath, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		if ready == nil || !ready() {
			w.WriteHeader(http.StatusServiceUnavailable)
			w.Write([]byte("not ready\n"))
			return
		}
		w.Write([]byte("ready\n"))
	})
	return mux
}
