// istiod-oracle: what istiod generates for one proxy, with no API server, no istiod process
// and no Envoy, for meshd's differential tests (tests/fidelity.rs). It runs Istio's own
// in-process test server (pilot/test/xds.FakeDiscoveryServer, the harness Istio's
// simulation tests use: a fake Kubernetes client, an in-memory config store and the real
// DiscoveryServer), connects an ADS client over an in-memory listener with the Node of an
// Envoy bootstrap, subscribes as Envoy does and prints istiod's /debug/config_dump for it.
//
//	istiod-oracle -bootstrap envoy.json -kube k8s.yaml -config istio.yaml -mesh mesh.yaml > dump.json
//
// -kube: Services, Pods (with status), EndpointSlices (loopback addresses are fine here).
// -config: Istio CRs (DestinationRule, VirtualService, Sidecar...).
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"log"
	"net/http/httptest"
	"os"
	"sort"
	"strings"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/known/structpb"

	"context"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"istio.io/istio/pilot/pkg/config/kube/crd"
	"istio.io/istio/pilot/test/xds"
	"istio.io/istio/pkg/config/mesh"
	istiolog "istio.io/istio/pkg/log"
	"net"
)

type failer struct{ cleanups []func() }

func (f *failer) Fail()                     { log.Fatal("failed") }
func (f *failer) FailNow()                  { log.Fatal("failed") }
func (f *failer) Fatal(a ...any)            { log.Fatal(a...) }
func (f *failer) Fatalf(s string, a ...any) { log.Fatalf(s, a...) }
func (f *failer) Log(a ...any)              { log.Print(a...) }
func (f *failer) Logf(s string, a ...any)   { log.Printf(s, a...) }
func (f *failer) TempDir() string           { d, _ := os.MkdirTemp("", "offline"); return d }
func (f *failer) Helper()                   {}
func (f *failer) Cleanup(fn func())         { f.cleanups = append(f.cleanups, fn) }
func (f *failer) Skip(a ...any)             { log.Fatal(a...) }

func read(p string) string {
	if p == "" {
		return ""
	}
	b, err := os.ReadFile(p)
	if err != nil {
		log.Fatal(err)
	}
	return string(b)
}

func main() {
	bootstrap := flag.String("bootstrap", "", "Envoy bootstrap JSON (its .node is used)")
	kubeF := flag.String("kube", "", "Kubernetes objects YAML")
	cfgF := flag.String("config", "", "Istio config YAML")
	meshF := flag.String("mesh", "", "MeshConfig YAML (applied over Istio's defaults)")
	flag.Parse()
	lo := istiolog.DefaultOptions()
	lo.OutputPaths = []string{"stderr"}
	lo.SetDefaultOutputLevel("all", istiolog.WarnLevel)
	if err := istiolog.Configure(lo); err != nil {
		log.Fatal(err)
	}

	var bs struct {
		Node json.RawMessage `json:"node"`
	}
	if err := json.Unmarshal([]byte(read(*bootstrap)), &bs); err != nil {
		log.Fatal(err)
	}
	node := &corev3.Node{}
	if err := protojson.Unmarshal(bs.Node, node); err != nil {
		log.Fatal(err)
	}
	parts := strings.Split(node.Id, "~") // type~ip~pod.ns~ns.svc.cluster.local

	m := mesh.DefaultMeshConfig()
	if *meshF != "" {
		var err error
		if m, err = mesh.ApplyMeshConfigDefaults(read(*meshF)); err != nil {
			log.Fatal(err)
		}
	}
	// Parse the Istio config here rather than via FakeOptions.ConfigString: that path leaves
	// config.Meta.Domain empty, so short hosts ("reviews") resolve to "reviews.default" instead
	// of the Service FQDN and no DestinationRule/VirtualService applies.
	cfgs, others, err := crd.ParseInputs(read(*cfgF))
	if err != nil {
		log.Fatal(err)
	}
	for i := range cfgs {
		cfgs[i].Domain = "cluster.local"
		if cfgs[i].Namespace == "" {
			cfgs[i].Namespace = "default"
		}
		if cfgs[i].CreationTimestamp.IsZero() {
			cfgs[i].CreationTimestamp = time.Now()
		}
	}
	logf("config: %d parsed, %d unrecognized kinds ignored", len(cfgs), len(others))
	t := &failer{}
	f := xds.NewFakeDiscoveryServer(t, xds.FakeOptions{
		KubernetesObjectString: read(*kubeF),
		Configs:                cfgs,
		MeshConfig:             m,
	})
	if node.Metadata == nil {
		node.Metadata = &structpb.Struct{Fields: map[string]*structpb.Value{}}
	}
	conn, err := grpc.NewClient("passthrough:///bufconn", grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithContextDialer(func(context.Context, string) (net.Conn, error) { return f.BufListener.Dial() }))
	if err != nil {
		log.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	quiet := make(chan struct{}, 100)
	go subscribe(ctx, conn, node, quiet)
	// wait until nothing new arrived for 1s (CDS, LDS, then EDS/RDS and re-pushes)
	for done := false; !done; {
		select {
		case <-quiet:
		case <-time.After(time.Second):
			done = true
		}
	}
	w := httptest.NewRecorder()
	r := httptest.NewRequest("GET", "/debug/config_dump?include_eds&proxyID="+parts[2], nil)
	f.DiscoveryDebug.ServeHTTP(w, r)
	fmt.Println(w.Body.String())
	if os.Getenv("DEBUGZ") != "" {
		for _, u := range strings.Split(os.Getenv("DEBUGZ"), ",") {
			w := httptest.NewRecorder()
			f.DiscoveryDebug.ServeHTTP(w, httptest.NewRequest("GET", u, nil))
			logf("%s:\n%s", u, w.Body.String())
		}
	}
	cancel()
	conn.Close()
	for i := len(t.cleanups) - 1; i >= 0; i-- {
		t.cleanups[i]()
	}
}

func logf(s string, a ...any) { fmt.Fprintf(os.Stderr, s+"\n", a...) }

const (
	cdsT = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
	ldsT = "type.googleapis.com/envoy.config.listener.v3.Listener"
	rdsT = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
	edsT = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
)

// subscribe behaves like Envoy: CDS+LDS, then EDS for every EDS cluster and RDS for every
// rds.route_config_name; it ACKs everything (istio-proxy's own filters included).
func subscribe(ctx context.Context, conn *grpc.ClientConn, node *corev3.Node, got chan<- struct{}) {
	stream, err := discoveryv3.NewAggregatedDiscoveryServiceClient(conn).StreamAggregatedResources(ctx)
	if err != nil {
		log.Fatal(err)
	}
	subs := map[string][]string{}
	send := func(t string, names []string, version, nonce string) {
		sort.Strings(names)
		_ = stream.Send(&discoveryv3.DiscoveryRequest{Node: node, TypeUrl: t, ResourceNames: names, VersionInfo: version, ResponseNonce: nonce})
	}
	send(cdsT, nil, "", "")
	send(ldsT, nil, "", "")
	for {
		resp, err := stream.Recv()
		if err != nil {
			return
		}
		got <- struct{}{}
		send(resp.TypeUrl, subs[resp.TypeUrl], resp.VersionInfo, resp.Nonce)
		var want []string
		wantT := ""
		switch resp.TypeUrl {
		case cdsT:
			wantT = edsT
			for _, r := range resp.Resources {
				c := &clusterv3.Cluster{}
				if r.UnmarshalTo(c) == nil && c.GetType() == clusterv3.Cluster_EDS {
					n := c.GetEdsClusterConfig().GetServiceName()
					if n == "" {
						n = c.Name
					}
					want = append(want, n)
				}
			}
		case ldsT:
			wantT = rdsT
			seen := map[string]bool{}
			for _, r := range resp.Resources {
				l := &listenerv3.Listener{}
				if r.UnmarshalTo(l) != nil {
					continue
				}
				chains := l.FilterChains
				if l.DefaultFilterChain != nil {
					chains = append(chains, l.DefaultFilterChain)
				}
				for _, fc := range chains {
					for _, fl := range fc.Filters {
						h := &hcmv3.HttpConnectionManager{}
						if fl.GetTypedConfig() == nil || fl.GetTypedConfig().UnmarshalTo(h) != nil {
							continue
						}
						if n := h.GetRds().GetRouteConfigName(); n != "" && !seen[n] {
							seen[n] = true
							want = append(want, n)
						}
					}
				}
			}
		}
		if wantT != "" {
			sort.Strings(want)
			if fmt.Sprint(want) != fmt.Sprint(subs[wantT]) {
				subs[wantT] = want
				send(wantT, want, "", "")
			}
		}
	}
}
