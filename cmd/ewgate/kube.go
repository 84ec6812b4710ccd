package main

import (
	"fmt"

	"github.com/ewgate/ewgate/discovery/kube"
)

// kubeMode decides whether the Kubernetes source runs: --kubeconfig turns
// it on; in a pod, with no --kubeconfig, it is on when no -f is given (a
// gateway with files keeps reading only them, as before, and needs no
// RBAC), or when --kubernetes on asks for both. $KUBECONFIG alone does
// not turn it on (a shell that has it set for kubectl should not make a
// gateway given -f read a cluster), but --kubernetes on may use it. Where
// the client config comes from is kubeClientFor's precedence.
func kubeMode(s settings, env kubeEnv) (on bool, err error) {
	switch s.Kubernetes {
	case "off":
		if s.Kubeconfig != "" {
			return false, fmt.Errorf("--kubernetes off (kubernetes) contradicts --kubeconfig %s", s.Kubeconfig)
		}
		return false, nil
	case "on":
		if _, err := env.kubeClientFor(s.Kubeconfig); err != nil {
			return false, fmt.Errorf("--kubernetes on (kubernetes): %w", err)
		}
		return true, nil
	case "auto", "":
		return s.Kubeconfig != "" || env.pod && len(s.Files) == 0, nil
	}
	return false, fmt.Errorf("--kubernetes (kubernetes) %q: want auto, on or off", s.Kubernetes)
}

// kubeSource builds the Kubernetes source the settings ask for, or nil.
func kubeSource(s settings, cfg kube.Config) (*kube.Source, error) {
	env := processKubeEnv()
	on, err := kubeMode(s, env)
	if err != nil || !on {
		return nil, err
	}
	rc, err := env.kubeRESTConfig(s.Kubeconfig)
	if err != nil {
		return nil, fmt.Errorf("kubernetes source: %w", err)
	}
	cfg.REST = rc
	cfg.ClusterDomain = s.ClusterDomain
	cfg.SystemNamespace = s.SystemNamespace
	return kube.New(cfg)
}
