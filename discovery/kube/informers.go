package kube

import (
	"context"
	"maps"
	"sync"

	istionet "istio.io/client-go/pkg/apis/networking/v1"
	istioclient "istio.io/client-go/pkg/clientset/versioned"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
)

// informers are the source's shared informers, one per resource.
type informers struct {
	services, slices, pods, nodes, namespaces cache.SharedIndexInformer
	gateways, entries, workloads, rules, vs   cache.SharedIndexInformer
	all                                       map[string]cache.SharedIndexInformer
}

// newInformers builds the informers; their lists and watches report to s.
// Only the system namespace is watched among namespaces: its network label
// is all the translation reads of them.
func newInformers(kc kubernetes.Interface, ic istioclient.Interface, systemNS string, s *Source) *informers {
	core := kc.CoreV1().RESTClient()
	disc := kc.DiscoveryV1().RESTClient()
	istio := ic.NetworkingV1().RESTClient()
	mk := func(name string, lw *cache.ListWatch, example runtime.Object) cache.SharedIndexInformer {
		inf := cache.NewSharedIndexInformer(&tracked{lw: lw, name: name, s: s}, example, 0, cache.Indexers{})
		inf.SetTransform(slim)
		inf.SetWatchErrorHandlerWithContext(func(_ context.Context, _ *cache.Reflector, err error) {
			// Counted where lists and watches fail (tracked): the
			// reflector retries some failures without calling this.
			s.watchFailed(name, err)
		})
		inf.AddEventHandler(cache.ResourceEventHandlerFuncs{
			AddFunc: func(any) { s.notify() },
			UpdateFunc: func(old, cur any) {
				if !unchanged(old, cur) {
					s.notify()
				}
			},
			DeleteFunc: func(any) { s.notify() },
		})
		return inf
	}
	i := &informers{
		services:   mk("services", cache.NewListWatchFromClient(core, "services", "", fields.Everything()), &corev1.Service{}),
		slices:     mk("endpointslices", cache.NewListWatchFromClient(disc, "endpointslices", "", fields.Everything()), &discoveryv1.EndpointSlice{}),
		pods:       mk("pods", cache.NewListWatchFromClient(core, "pods", "", fields.Everything()), &corev1.Pod{}),
		nodes:      mk("nodes", cache.NewListWatchFromClient(core, "nodes", "", fields.Everything()), &corev1.Node{}),
		namespaces: mk("namespaces", cache.NewListWatchFromClient(core, "namespaces", "", fields.OneTermEqualSelector("metadata.name", systemNS)), &corev1.Namespace{}),
		gateways:   mk("gateways.networking.istio.io", cache.NewListWatchFromClient(istio, "gateways", "", fields.Everything()), &istionet.Gateway{}),
		entries:    mk("serviceentries.networking.istio.io", cache.NewListWatchFromClient(istio, "serviceentries", "", fields.Everything()), &istionet.ServiceEntry{}),
		workloads:  mk("workloadentries.networking.istio.io", cache.NewListWatchFromClient(istio, "workloadentries", "", fields.Everything()), &istionet.WorkloadEntry{}),
		rules:      mk("destinationrules.networking.istio.io", cache.NewListWatchFromClient(istio, "destinationrules", "", fields.Everything()), &istionet.DestinationRule{}),
		vs:         mk("virtualservices.networking.istio.io", cache.NewListWatchFromClient(istio, "virtualservices", "", fields.Everything()), &istionet.VirtualService{}),
	}
	i.all = map[string]cache.SharedIndexInformer{
		"services": i.services, "endpointslices": i.slices, "pods": i.pods, "nodes": i.nodes, "namespaces": i.namespaces,
		"gateways": i.gateways, "serviceentries": i.entries, "workloadentries": i.workloads, "destinationrules": i.rules,
		"virtualservices": i.vs,
	}
	return i
}

// slim keeps of an object what the translation reads, so that the caches
// of a large cluster stay small: managed fields go from every object, and
// pods and nodes (the most numerous and largest objects) keep only their
// identity, labels, service account and node.
func slim(obj any) (any, error) {
	switch o := obj.(type) {
	case *corev1.Pod:
		return &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: o.Name, Namespace: o.Namespace, UID: o.UID, ResourceVersion: o.ResourceVersion, Labels: o.Labels},
			Spec:       corev1.PodSpec{ServiceAccountName: o.Spec.ServiceAccountName, NodeName: o.Spec.NodeName},
		}, nil
	case *corev1.Node:
		return &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: o.Name, UID: o.UID, ResourceVersion: o.ResourceVersion, Labels: o.Labels}}, nil
	}
	if a, err := meta.Accessor(obj); err == nil {
		a.SetManagedFields(nil)
	}
	return obj, nil
}

// unchanged reports whether an update changed nothing the translation
// reads: pods and nodes are updated all the time (status, heartbeats)
// and must not cost a rebuild each. slim has already dropped what is not
// read, so comparing what it kept is enough.
func unchanged(old, cur any) bool {
	switch o := old.(type) {
	case *corev1.Pod:
		c, ok := cur.(*corev1.Pod)
		return ok && maps.Equal(o.Labels, c.Labels) && o.Spec.ServiceAccountName == c.Spec.ServiceAccountName && o.Spec.NodeName == c.Spec.NodeName
	case *corev1.Node:
		c, ok := cur.(*corev1.Node)
		return ok && maps.Equal(o.Labels, c.Labels)
	}
	return false
}

func (i *informers) start(ctx context.Context, wg *sync.WaitGroup) {
	for _, inf := range i.all {
		wg.Add(1)
		go func() {
			defer wg.Done()
			inf.RunWithContext(ctx)
		}()
	}
}

func (i *informers) hasSynced() bool {
	for _, inf := range i.all {
		if !inf.HasSynced() {
			return false
		}
	}
	return true
}

// pending names the informers not synced yet.
func (i *informers) pending() []string {
	var out []string
	for name, inf := range i.all {
		if !inf.HasSynced() {
			out = append(out, name)
		}
	}
	return out
}

// snapshot copies the informers' current objects (pointers into their
// caches: read only).
func (i *informers) snapshot() *snapshot {
	s := &snapshot{
		services:  list[*corev1.Service](i.services),
		slices:    list[*discoveryv1.EndpointSlice](i.slices),
		gateways:  list[*istionet.Gateway](i.gateways),
		entries:   list[*istionet.ServiceEntry](i.entries),
		workloads: list[*istionet.WorkloadEntry](i.workloads),
		rules:     list[*istionet.DestinationRule](i.rules),
		vs:        list[*istionet.VirtualService](i.vs),
		pods:      make(map[string]*corev1.Pod),
		nodes:     make(map[string]*corev1.Node),
	}
	for _, p := range list[*corev1.Pod](i.pods) {
		s.pods[p.Namespace+"/"+p.Name] = p
	}
	for _, n := range list[*corev1.Node](i.nodes) {
		s.nodes[n.Name] = n
	}
	if ns := list[*corev1.Namespace](i.namespaces); len(ns) > 0 {
		s.systemNS = ns[0]
	}
	return s
}

func list[T any](inf cache.SharedIndexInformer) []T {
	items := inf.GetStore().List()
	out := make([]T, 0, len(items))
	for _, o := range items {
		if t, ok := o.(T); ok {
			out = append(out, t)
		}
	}
	return out
}

// tracked is a ListerWatcher that tells the source whether its lists and
// watches reach the API server: the informers' own signal for "connected
// again" after an outage, which client-go does not otherwise expose.
type tracked struct {
	lw   *cache.ListWatch
	name string
	s    *Source
}

func (t *tracked) report(err error) {
	if err != nil {
		t.s.watchError(t.name, err)
	} else {
		t.s.watchOK(t.name)
	}
}

func (t *tracked) List(opts metav1.ListOptions) (runtime.Object, error) {
	return t.ListWithContext(context.Background(), opts)
}

func (t *tracked) Watch(opts metav1.ListOptions) (watch.Interface, error) {
	return t.WatchWithContext(context.Background(), opts)
}

func (t *tracked) ListWithContext(ctx context.Context, opts metav1.ListOptions) (runtime.Object, error) {
	obj, err := t.lw.ListWithContext(ctx, opts)
	if ctx.Err() == nil {
		t.report(err)
	}
	return obj, err
}

func (t *tracked) WatchWithContext(ctx context.Context, opts metav1.ListOptions) (watch.Interface, error) {
	w, err := t.lw.WatchWithContext(ctx, opts)
	if ctx.Err() == nil {
		t.report(err)
	}
	return w, err
}
