package deploy_test

import (
	"strconv"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"
)

// TestSPIREComponentPatchesTheSVIDVolume checks that the JSON patch of
// components/spire-csi, which addresses volumes and mounts by index,
// still points at the base's "svid" volume and mount (kustomize would
// refuse to render otherwise, but only on the user's machine).
func TestSPIREComponentPatchesTheSVIDVolume(t *testing.T) {
	var comp struct {
		Patches []struct{ Patch string }
	}
	unmarshal(t, "components/spire-csi/kustomization.yaml", &comp)
	var sts struct {
		Spec struct {
			Template struct {
				Spec struct {
					Volumes    []struct{ Name string }
					Containers []struct {
						VolumeMounts []struct{ Name string }
					}
				}
			}
		}
	}
	unmarshal(t, "base/statefulset.yaml", &sts)
	pod := sts.Spec.Template.Spec
	checked := 0
	for _, p := range comp.Patches {
		var ops []struct {
			Op, Path string
			Value    any
		}
		if err := yaml.Unmarshal([]byte(p.Patch), &ops); err != nil {
			t.Fatalf("patch: %v", err)
		}
		for _, op := range ops {
			if op.Op != "test" {
				continue
			}
			var names []string
			var rest string
			switch {
			case strings.HasPrefix(op.Path, "/spec/template/spec/volumes/"):
				rest = strings.TrimPrefix(op.Path, "/spec/template/spec/volumes/")
				for _, v := range pod.Volumes {
					names = append(names, v.Name)
				}
			case strings.HasPrefix(op.Path, "/spec/template/spec/containers/0/volumeMounts/"):
				rest = strings.TrimPrefix(op.Path, "/spec/template/spec/containers/0/volumeMounts/")
				for _, m := range pod.Containers[0].VolumeMounts {
					names = append(names, m.Name)
				}
			default:
				continue
			}
			idx, field, _ := strings.Cut(rest, "/")
			i, err := strconv.Atoi(idx)
			if err != nil || field != "name" {
				t.Fatalf("test op path %s: want .../<index>/name", op.Path)
			}
			if i >= len(names) || names[i] != op.Value {
				t.Errorf("test op %s = %v, but the base has %v there", op.Path, op.Value, names)
			}
			checked++
		}
	}
	if checked != 2 {
		t.Errorf("%d index checks in the component, want 2 (volume and mount)", checked)
	}
}
