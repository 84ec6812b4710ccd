package istiopub

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"
)

// AnnotationSpecHash holds a hash of what the publisher wrote (labels,
// annotations and spec, before the API server's defaulting): an object
// whose hash matches the wanted one is left alone, so that an unchanged
// state writes nothing.
const AnnotationSpecHash = "ewgate.io/spec-hash"

// resources maps each kind to its API resource.
var resources = map[Kind]schema.GroupVersionResource{
	KindGateway:       {Group: "gateway.networking.k8s.io", Version: "v1", Resource: "gateways"},
	KindServiceEntry:  {Group: "networking.istio.io", Version: "v1", Resource: "serviceentries"},
	KindWorkloadEntry: {Group: "networking.istio.io", Version: "v1", Resource: "workloadentries"},
}

// kinds is the order objects are written in: networks' gateways first,
// then services, then their endpoints.
var kinds = []Kind{KindGateway, KindServiceEntry, KindWorkloadEntry}

// Counts are the writes of one reconcile.
type Counts struct {
	Created, Updated, Deleted int
	// Refused counts wanted objects not written because an object of the
	// same name exists without LabelManagedBy.
	Refused int
}

func (c *Counts) add(d Counts) {
	c.Created += d.Created
	c.Updated += d.Updated
	c.Deleted += d.Deleted
	c.Refused += d.Refused
}

// applier writes the wanted objects through the dynamic client.
type applier struct {
	client dynamic.Interface
	log    *slog.Logger
	// gatewayNamespace is Options.Namespace, where all Gateways are: they
	// are listed there only, so the publisher needs no cluster-wide
	// access to Gateways.
	gatewayNamespace string
}

// listNamespace is where the objects of kind k are listed and watched.
func (a *applier) listNamespace(k Kind) string {
	if k == KindGateway {
		return a.gatewayNamespace
	}
	return metav1.NamespaceAll
}

// reconcile makes the objects with LabelManagedBy exactly want: it
// creates what is missing, updates what differs and deletes the rest.
// It never updates or deletes an object without the label. Without
// collect it deletes nothing. Errors of one kind or object do not stop
// the others; all are returned joined.
func (a *applier) reconcile(ctx context.Context, want []Object, collect bool) (Counts, error) {
	byKind := make(map[Kind][]Object)
	for _, o := range want {
		byKind[o.Kind] = append(byKind[o.Kind], o)
	}
	var total Counts
	var errs []error
	have := make(map[Kind]map[string]*unstructured.Unstructured)
	for _, k := range kinds {
		h, err := a.owned(ctx, k)
		if err != nil {
			if len(byKind[k]) > 0 || !apierrors.IsNotFound(err) {
				errs = append(errs, err)
			} // else the kind is not installed, and nothing of it is wanted
			continue
		}
		have[k] = h
		c, err := a.write(ctx, k, byKind[k], h)
		total.add(c)
		if err != nil {
			errs = append(errs, err)
		}
	}
	// Deletions run in reverse order: endpoints before their service,
	// services before the gateways.
	for i := len(kinds) - 1; i >= 0 && collect; i-- {
		k := kinds[i]
		if have[k] == nil {
			continue
		}
		c, err := a.collect(ctx, k, byKind[k], have[k])
		total.add(c)
		if err != nil {
			errs = append(errs, err)
		}
	}
	return total, errors.Join(errs...)
}

// owned lists the objects of kind k with LabelManagedBy, by
// namespace/name.
func (a *applier) owned(ctx context.Context, k Kind) (map[string]*unstructured.Unstructured, error) {
	list, err := a.client.Resource(resources[k]).Namespace(a.listNamespace(k)).List(ctx,
		metav1.ListOptions{LabelSelector: LabelManagedBy + "=" + ManagedByValue})
	if err != nil {
		return nil, fmt.Errorf("list %s: %w", k, err)
	}
	out := make(map[string]*unstructured.Unstructured, len(list.Items))
	for i := range list.Items {
		u := &list.Items[i]
		out[u.GetNamespace()+"/"+u.GetName()] = u
	}
	return out, nil
}

// write creates the objects of want missing from have and updates those
// whose AnnotationSpecHash differs.
func (a *applier) write(ctx context.Context, k Kind, want []Object, have map[string]*unstructured.Unstructured) (Counts, error) {
	var c Counts
	ri := a.client.Resource(resources[k])
	var errs []error
	for _, o := range want {
		u, err := toUnstructured(o)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", o.Key(), err))
			continue
		}
		if old, ok := have[o.Namespace+"/"+o.Name]; ok {
			if old.GetAnnotations()[AnnotationSpecHash] == u.GetAnnotations()[AnnotationSpecHash] {
				continue
			}
			u.SetResourceVersion(old.GetResourceVersion())
			if _, err := ri.Namespace(o.Namespace).Update(ctx, u, metav1.UpdateOptions{}); err != nil {
				errs = append(errs, fmt.Errorf("update %s: %w", o.Key(), err))
				continue
			}
			a.log.Info("istio publisher: updated", "object", o.Key())
			c.Updated++
			continue
		}
		_, err = ri.Namespace(o.Namespace).Create(ctx, u, metav1.CreateOptions{})
		switch {
		case apierrors.IsAlreadyExists(err):
			// Not in the owned list: someone else's object, or ours
			// created since the list; the next reconcile tells them apart.
			a.log.Warn("istio publisher: not writing over an object it did not create", "object", o.Key())
			c.Refused++
		case err != nil:
			errs = append(errs, fmt.Errorf("create %s: %w", o.Key(), err))
		default:
			a.log.Info("istio publisher: created", "object", o.Key())
			c.Created++
		}
	}
	return c, errors.Join(errs...)
}

// collect deletes the objects of have that want does not list. The
// delete is conditional on the UID listed, so that an object recreated
// since is not deleted unseen.
func (a *applier) collect(ctx context.Context, k Kind, want []Object, have map[string]*unstructured.Unstructured) (Counts, error) {
	var c Counts
	keep := make(map[string]bool, len(want))
	for _, o := range want {
		keep[o.Namespace+"/"+o.Name] = true
	}
	var errs []error
	for key, u := range have {
		if keep[key] {
			continue
		}
		uid := u.GetUID()
		err := a.client.Resource(resources[k]).Namespace(u.GetNamespace()).Delete(ctx, u.GetName(),
			metav1.DeleteOptions{Preconditions: &metav1.Preconditions{UID: &uid}})
		switch {
		case apierrors.IsNotFound(err) || apierrors.IsConflict(err):
			// Gone already, or replaced by another object.
		case err != nil:
			errs = append(errs, fmt.Errorf("delete %s %s: %w", k, key, err))
		default:
			a.log.Info("istio publisher: deleted", "object", string(k)+" "+key)
			c.Deleted++
		}
	}
	return c, errors.Join(errs...)
}

// toUnstructured converts o for the dynamic client, with
// AnnotationSpecHash set.
func toUnstructured(o Object) (*unstructured.Unstructured, error) {
	raw, err := json.Marshal(o.Spec) // Istio's specs marshal as protobuf JSON
	if err != nil {
		return nil, err
	}
	var spec map[string]any
	if err := json.Unmarshal(raw, &spec); err != nil {
		return nil, err
	}
	annotations := maps.Clone(o.Annotations)
	if annotations == nil {
		annotations = make(map[string]string)
	}
	// encoding/json sorts map keys: the same object hashes the same.
	canon, err := json.Marshal(struct {
		Labels, Annotations map[string]string
		Spec                map[string]any
	}{o.Labels, annotations, spec})
	if err != nil {
		return nil, err
	}
	h := sha256.Sum256(canon)
	annotations[AnnotationSpecHash] = hex.EncodeToString(h[:16])
	gvr := resources[o.Kind]
	u := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": gvr.GroupVersion().String(),
		"kind":       string(o.Kind),
		"spec":       spec,
	}}
	u.SetNamespace(o.Namespace)
	u.SetName(o.Name)
	u.SetLabels(o.Labels)
	u.SetAnnotations(annotations)
	return u, nil
}
