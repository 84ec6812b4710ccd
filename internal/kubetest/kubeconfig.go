package kubetest

import (
	"encoding/json"
	"os"
)

// writeKubeconfig writes a kubeconfig (JSON, which is YAML) that client-go's
// clientcmd and kubectl load: one cluster at host trusting caPEM, one user
// with the bearer token, and a current context joining them.
func writeKubeconfig(path, host string, caPEM []byte, token string) error {
	type named struct {
		Name    string `json:"name"`
		Cluster any    `json:"cluster,omitempty"`
		User    any    `json:"user,omitempty"`
		Context any    `json:"context,omitempty"`
	}
	cfg := map[string]any{
		"apiVersion": "v1",
		"kind":       "Config",
		"clusters": []named{{Name: "kubetest", Cluster: map[string]any{
			"server":                     host,
			"certificate-authority-data": caPEM, // []byte: base64, as kubeconfig wants
		}}},
		"users":           []named{{Name: "admin", User: map[string]string{"token": token}}},
		"contexts":        []named{{Name: "kubetest", Context: map[string]string{"cluster": "kubetest", "user": "admin"}}},
		"current-context": "kubetest",
	}
	b, err := json.MarshalIndent(cfg, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(path, append(b, '\n'), 0o600)
}
