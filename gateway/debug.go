package gateway

import (
	"time"
)

// DebugConfig describes what the gateway serves now, for /debug/config.
type DebugConfig struct {
	Network   string          `json:"network"`
	Listeners []DebugListener `json:"listeners"`
	Routes    []DebugRoute    `json:"routes"`
}

// DebugListener is one served port.
type DebugListener struct {
	Port    uint32   `json:"port"`
	Address string   `json:"address,omitempty"`
	Gateway string   `json:"gateway"`
	Mode    string   `json:"mode"`
	Hosts   []string `json:"hosts"`
}

// DebugRoute is one service, port and subset with its eligible endpoints.
type DebugRoute struct {
	SNI       string          `json:"sni"`
	Service   string          `json:"service"`
	Namespace string          `json:"namespace"`
	Port      uint16          `json:"port"`
	Subset    string          `json:"subset,omitempty"`
	ExportTo  []string        `json:"exportTo,omitempty"`
	Endpoints []DebugEndpoint `json:"endpoints"`
}

// DebugEndpoint is one eligible endpoint and its live state.
type DebugEndpoint struct {
	Address      string     `json:"address"`
	Weight       uint32     `json:"weight"`
	Locality     string     `json:"locality,omitempty"`
	Active       int64      `json:"active"`
	Ejected      bool       `json:"ejected"`
	EjectedUntil *time.Time `json:"ejectedUntil,omitempty"`
}

// Debug returns a snapshot of the gateway's listeners, routes and endpoint
// state; nil before the first Apply.
func (g *Gateway) Debug() *DebugConfig {
	t := g.table.Load()
	if t == nil {
		return nil
	}
	addrs := g.Addrs()
	now := time.Now().UnixNano()
	d := &DebugConfig{Network: t.view.Node.Network, Listeners: []DebugListener{}, Routes: []DebugRoute{}}
	for _, l := range t.view.Listeners {
		dl := DebugListener{Port: l.Port, Gateway: l.Gateway.Source.String(), Mode: string(l.Server.Mode)}
		if a, ok := addrs[l.Port]; ok {
			dl.Address = a.String()
		}
		for _, h := range l.Server.Hosts {
			dl.Hosts = append(dl.Hosts, h.String())
		}
		d.Listeners = append(d.Listeners, dl)
	}
	for _, r := range t.view.Routes() {
		dr := DebugRoute{SNI: r.Key.SNI(), Service: r.Service.Host, Namespace: r.Service.Namespace,
			Port: r.Key.Port, Subset: r.Key.Subset, ExportTo: r.Service.ExportTo, Endpoints: []DebugEndpoint{}}
		cl := t.clusters[r]
		for i, u := range cl.members {
			de := DebugEndpoint{Address: u.addr, Weight: uint32(cl.weight(i)), Locality: r.Targets[i].Locality, Active: u.active.Load()}
			if until := u.ejectedUntil.Load(); until > now {
				tu := time.Unix(0, until)
				de.Ejected, de.EjectedUntil = true, &tu
			}
			dr.Endpoints = append(dr.Endpoints, de)
		}
		d.Routes = append(d.Routes, dr)
	}
	return d
}
