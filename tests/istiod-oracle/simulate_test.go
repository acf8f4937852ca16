// istiod-simulate: runs istiod's OWN request simulator (istio.io/istio/pilot/pkg/simulation,
// traffic.go) over the case files of tests/simulation/ (format: tests/simulation/README.md),
// so that a transcribed case is checked against real istiod before it is held against meshd.
// It is a Go test because the simulator takes a *testing.T; it is built as a test binary:
//
//	(cd tests/istiod-oracle && go test -c -o ../../target/go/istiod-simulate .)
//	target/go/istiod-simulate tests/simulation/sidecar/*.yaml
//	target/go/istiod-simulate -test.run TestSimulate -- FILES...   (same thing)
//	SIM_CASES="a.yaml b.yaml" target/go/istiod-simulate              (when no file is given)
//
// Each case runs on its own FakeDiscoveryServer (Istio's in-process test server, as the Go
// simulation tests use) with the configuration read the way a real cluster names things:
// Istio objects through crd.ParseInputs with domain cluster.local and namespace "default"
// when absent (not FakeOptions.ConfigString, which leaves the domain empty), Kubernetes
// objects (apiVersion v1, apps/*, discovery.k8s.io/*, networking.k8s.io/*) through FakeOptions.KubernetesObjectString,
// Gateway API objects (gateway.networking.k8s.io/*) through both, as TestSidecarRoutes does.
// The proxy is built as Istio's tests build it and completed by SetupProxy.
//
// istiod's feature flags are environment variables read once at start into the variables of
// istio.io/istio/pilot/pkg/features. A case's `istiodEnv` sets those variables for that file
// only (as the Go tests' test.SetForTest does) and restores them afterwards; a name not in
// istiodFlags, or a value that is not a boolean, fails the file (naming the supported ones).
// A call's `mtlsSecretConfigName` is traffic.go's Call.MtlsSecretConfigName.
//
// Output (stdout): one line per call, `PASS <file> <call name>` or
// `FAIL <file> <call name>: want {...} got {...}` (got: all seven fields and the error);
// likewise `PASS|FAIL <file> inboundClusters`, `... cluster <name>` and `... routes <name>`
// for the checks made without calls (`clusters[].priorities` are read from the cluster's
// LoadAssignment as istiod generates it, with no extra ApplyLocalityLoadBalancer);
// `FAIL <file>: <why>` when a case cannot be read or set up (its calls count as failed);
// then `istiod-simulate: K of L config checks ... as transcribed` when there were any, and
// last `istiod-simulate: N of M calls as transcribed`. Exit status 1 if anything failed.
// The test framework's own output and istiod's warnings go to stderr.
//
// Comparison is traffic.go's Result.Matches: the error is always compared (absent = none;
// compared as text), each other expected field when named; `strict` compares every field
// (absent = ""). `istiodSkip` cases are compared like the rest; `knownFailing` is about meshd
// and ignored. `method` and `headers` are accepted but traffic.go does not match on them.
package main

import (
	"flag"
	"fmt"
	"log"
	"net/http"
	"os"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	"google.golang.org/protobuf/types/known/structpb"
	"sigs.k8s.io/yaml"

	"istio.io/istio/pilot/pkg/config/kube/crd"
	"istio.io/istio/pilot/pkg/features"
	"istio.io/istio/pilot/pkg/model"
	"istio.io/istio/pilot/pkg/simulation"
	"istio.io/istio/pilot/test/xds"
	"istio.io/istio/pkg/config/mesh"
	istiolog "istio.io/istio/pkg/log"
	"istio.io/istio/pkg/test"
)

type simCase struct {
	Source string `json:"source"`
	Proxy  struct {
		Type      string            `json:"type"`
		IP        string            `json:"ip"`
		IPs       []string          `json:"ips"`
		Namespace string            `json:"namespace"`
		Name      string            `json:"name"`
		Labels    map[string]string `json:"labels"`
		Meta      map[string]string `json:"meta"`
	} `json:"proxy"`
	Mesh            string     `json:"mesh"`
	Config          string     `json:"config"`
	Calls           []simCall  `json:"calls"`
	InboundClusters []string   `json:"inboundClusters"`
	Clusters        []simCheck `json:"clusters"`
	// route configuration name -> domain -> the sorted clusters of the routes of the virtual
	// host holding that domain (null: no such virtual host, or its routes name no cluster);
	// TestSidecarRoutes' check (xdstest.ExtractVirtualHosts).
	Routes map[string]map[string][]string `json:"routes"`
	// istiod feature flag (environment variable name) -> value, for this file only.
	IstiodEnv map[string]string `json:"istiodEnv"`
	// Marks about meshd, not istiod: read and ignored here.
	KnownFailing     string `json:"knownFailing"`
	DiffersOnPurpose string `json:"differsOnPurpose"`
}

// istiodFlags are the feature flags a case may set in `istiodEnv`: the environment variable
// istiod reads and the variable of pilot/pkg/features it reads it into. (Our istio module
// predates PILOT_ENABLE_HEADLESS_FILTER_CHAIN_LISTENER, so it cannot be offered.)
var istiodFlags = map[string]*bool{
	"ENABLE_TLS_ON_SIDECAR_INGRESS": &features.EnableTLSOnSidecarIngress,
	"PILOT_ENABLE_IP_AUTOALLOCATE":  &features.EnableIPAutoallocate,
}

// flagSetting is one istiodEnv entry, checked.
type flagSetting struct {
	ptr *bool
	val bool
}

// istiodEnv checks a case's istiodEnv against istiodFlags.
func (c *simCase) istiodEnv() ([]flagSetting, error) {
	var supported []string
	for n := range istiodFlags {
		supported = append(supported, n)
	}
	sort.Strings(supported)
	var names []string
	for n := range c.IstiodEnv {
		names = append(names, n)
	}
	sort.Strings(names)
	var out []flagSetting
	for _, n := range names {
		ptr, ok := istiodFlags[n]
		if !ok {
			return nil, fmt.Errorf("istiodEnv: %s is not a flag this oracle can set (supported: %s)",
				n, strings.Join(supported, ", "))
		}
		v, err := strconv.ParseBool(c.IstiodEnv[n])
		if err != nil {
			return nil, fmt.Errorf("istiodEnv: %s=%q is not a boolean", n, c.IstiodEnv[n])
		}
		out = append(out, flagSetting{ptr, v})
	}
	return out, nil
}

// configChecks is how many checks without calls a case makes.
func (c *simCase) configChecks() int {
	n := len(c.Clusters) + len(c.Routes)
	if c.InboundClusters != nil {
		n++
	}
	return n
}

type simCall struct {
	Name string `json:"name"`
	Call struct {
		Mode     string            `json:"mode"`
		Address  string            `json:"address"`
		Port     int               `json:"port"`
		Protocol string            `json:"protocol"`
		TLS      string            `json:"tls"`
		ALPN     string            `json:"alpn"`
		SNI      string            `json:"sni"`
		Host     string            `json:"host"`
		Path     string            `json:"path"`
		Method   string            `json:"method"`
		Headers  map[string]string `json:"headers"`
	} `json:"call"`
	Expect struct {
		Error       *string `json:"error"`
		Listener    string  `json:"listener"`
		FilterChain string  `json:"filterChain"`
		RouteConfig string  `json:"routeConfig"`
		VirtualHost string  `json:"virtualHost"`
		Route       string  `json:"route"`
		Cluster     string  `json:"cluster"`
	} `json:"expect"`
	Strict           bool   `json:"strict"`
	IstiodSkip       string `json:"istiodSkip"`
	KnownFailing     string `json:"knownFailing"`
	DiffersOnPurpose string `json:"differsOnPurpose"`
	// traffic.go's Call.MtlsSecretConfigName: the SDS secret a chain must serve (with a
	// required client certificate) to count as mTLS; istiod's default is "default".
	MtlsSecretConfigName string `json:"mtlsSecretConfigName"`
}

type simCheck struct {
	Name       string         `json:"name"`
	Type       string         `json:"type"`
	Priorities map[string]int `json:"priorities"`
}

var (
	simFiles   []string
	simOut     = os.Stdout
	callsPass  int
	callsTotal int
	chkPass    int
	chkTotal   int
)

func TestMain(m *testing.M) {
	flag.Parse()
	simFiles = flag.Args()
	if len(simFiles) == 0 {
		simFiles = strings.Fields(os.Getenv("SIM_CASES"))
	}
	lo := istiolog.DefaultOptions()
	lo.OutputPaths = []string{"stderr"}
	lo.SetDefaultOutputLevel("all", istiolog.WarnLevel)
	if err := istiolog.Configure(lo); err != nil {
		log.Fatal(err)
	}
	// stdout carries only our lines; the test framework prints to os.Stdout as it runs.
	os.Stdout = os.Stderr
	code := m.Run()
	if chkTotal > 0 {
		fmt.Fprintf(simOut, "istiod-simulate: %d of %d config checks (inboundClusters, clusters, routes) as transcribed\n", chkPass, chkTotal)
	}
	fmt.Fprintf(simOut, "istiod-simulate: %d of %d calls as transcribed\n", callsPass, callsTotal)
	if code == 0 && (callsPass != callsTotal || chkPass != chkTotal) {
		code = 1
	}
	os.Exit(code)
}

func TestSimulate(t *testing.T) {
	if len(simFiles) == 0 {
		fmt.Fprintln(simOut, "istiod-simulate: no case files (give them as arguments or in SIM_CASES)")
		t.Fail()
		return
	}
	for _, f := range simFiles {
		runCaseFile(t, f)
	}
}

// recFailer is the file's *testing.T that remembers why setup failed.
type recFailer struct {
	*testing.T
	msg string
}

func (r *recFailer) Fatal(a ...any) { r.msg = fmt.Sprint(a...); r.T.Fatal(a...) }
func (r *recFailer) Fatalf(s string, a ...any) {
	r.msg = fmt.Sprintf(s, a...)
	r.T.Fatalf(s, a...)
}

func failFile(file string, c *simCase, why string) {
	fmt.Fprintf(simOut, "FAIL %s: %s\n", file, why)
	if c != nil {
		callsTotal += len(c.Calls)
		chkTotal += c.configChecks()
	}
}

func runCaseFile(t *testing.T, file string) {
	b, err := os.ReadFile(file)
	if err != nil {
		failFile(file, nil, err.Error())
		t.Fail()
		return
	}
	c := &simCase{}
	if err := yaml.UnmarshalStrict(b, c); err != nil {
		// count what can be counted
		_ = yaml.Unmarshal(b, c)
		failFile(file, c, "reading the case: "+err.Error())
		t.Fail()
		return
	}
	flags, err := c.istiodEnv()
	if err != nil {
		failFile(file, c, err.Error())
		t.Fail()
		return
	}
	var s *xds.FakeDiscoveryServer
	var proxy *model.Proxy
	rf := &recFailer{}
	setup := func(t *testing.T) {
		rf.T = t
		s, proxy, err = setupCase(rf, c)
	}
	ran := false
	t.Run(file, func(t *testing.T) {
		// Set before the server starts, so restored (cleanups run last-in first-out) after it stops.
		for _, f := range flags {
			test.SetForTest(t, f.ptr, f.val)
		}
		setup(t)
		if err != nil || s == nil {
			return
		}
		ran = true
		for _, call := range c.Calls {
			runCall(t, s, proxy, file, call)
		}
		if c.configChecks() > 0 {
			checked := false
			t.Run("config", func(t *testing.T) {
				sim := simulation.NewSimulation(t, s, proxy)
				checked = true
				ok := checkClusters(file, c, sim.Clusters)
				if !checkRoutes(file, c, sim.Routes) {
					ok = false
				}
				if !ok {
					t.Fail()
				}
			})
			if !checked {
				fmt.Fprintf(simOut, "FAIL %s: istiod's simulator stopped while generating config (its message is on stderr)\n", file)
				chkTotal += c.configChecks()
			}
		}
	})
	if !ran {
		why := "setting up istiod failed"
		if err != nil {
			why += ": " + err.Error()
		} else if rf.msg != "" {
			why += ": " + rf.msg
		}
		failFile(file, c, why)
		t.Fail()
	}
}

func setupCase(t *recFailer, c *simCase) (*xds.FakeDiscoveryServer, *model.Proxy, error) {
	m := mesh.DefaultMeshConfig()
	if strings.TrimSpace(c.Mesh) != "" {
		var err error
		if m, err = mesh.ApplyMeshConfigDefaults(c.Mesh); err != nil {
			return nil, nil, fmt.Errorf("mesh: %v", err)
		}
	}
	var kube, istio []string
	for _, doc := range splitYAML(c.Config) {
		var h struct {
			APIVersion string `json:"apiVersion"`
		}
		if err := yaml.Unmarshal([]byte(doc), &h); err != nil {
			return nil, nil, fmt.Errorf("config: %v", err)
		}
		switch {
		case h.APIVersion == "v1" || strings.HasPrefix(h.APIVersion, "apps/") || strings.HasPrefix(h.APIVersion, "discovery.k8s.io/") || strings.HasPrefix(h.APIVersion, "networking.k8s.io/"):
			kube = append(kube, doc)
		case strings.HasPrefix(h.APIVersion, "gateway.networking.k8s.io/"):
			// Gateway API objects reach istiod through its gateway controller, which reads the
			// Kubernetes client; given to both, as TestSidecarRoutes does.
			kube = append(kube, doc)
			istio = append(istio, doc)
		default:
			istio = append(istio, doc)
		}
	}
	cfgs, others, err := crd.ParseInputs(strings.Join(istio, "\n---\n"))
	if err != nil {
		return nil, nil, fmt.Errorf("config: %v", err)
	}
	if len(others) > 0 {
		var kinds []string
		for _, o := range others {
			kinds = append(kinds, o.APIVersion+" "+o.Kind)
		}
		return nil, nil, fmt.Errorf("config: kinds istiod does not read: %v", kinds)
	}
	now := time.Now()
	for i := range cfgs {
		cfgs[i].Domain = "cluster.local"
		if cfgs[i].Namespace == "" {
			cfgs[i].Namespace = "default"
		}
		if cfgs[i].CreationTimestamp.IsZero() {
			cfgs[i].CreationTimestamp = now
		}
	}
	proxy, err := buildProxy(c)
	if err != nil {
		return nil, nil, fmt.Errorf("proxy: %v", err)
	}
	s := xds.NewFakeDiscoveryServer(t, xds.FakeOptions{
		KubernetesObjectString: strings.Join(kube, "\n---\n"),
		Configs:                cfgs,
		MeshConfig:             m,
	})
	return s, s.SetupProxy(proxy), nil
}

// splitYAML splits a multi-document YAML string into its non-empty documents.
func splitYAML(s string) []string {
	var docs []string
	cur := []string{}
	flush := func() {
		d := strings.Join(cur, "\n")
		cur = cur[:0]
		for _, l := range strings.Split(d, "\n") {
			if t := strings.TrimSpace(l); t != "" && !strings.HasPrefix(t, "#") {
				docs = append(docs, d+"\n")
				return
			}
		}
	}
	for _, l := range strings.Split(s, "\n") {
		if strings.HasPrefix(l, "---") && strings.TrimSpace(strings.TrimPrefix(l, "---")) == "" {
			flush()
			continue
		}
		cur = append(cur, l)
	}
	flush()
	return docs
}

func buildProxy(c *simCase) (*model.Proxy, error) {
	p := c.Proxy
	proxy := &model.Proxy{}
	switch p.Type {
	case "", "sidecar":
		proxy.Type = model.SidecarProxy
	case "router":
		proxy.Type = model.Router
	default:
		return nil, fmt.Errorf("unknown proxy type %q", p.Type)
	}
	if p.IP != "" {
		proxy.IPAddresses = append(proxy.IPAddresses, p.IP)
	}
	proxy.IPAddresses = append(proxy.IPAddresses, p.IPs...)
	raw := map[string]any{}
	for k, v := range p.Meta {
		raw[k] = v
	}
	if p.Namespace != "" {
		raw["NAMESPACE"] = p.Namespace
	}
	if len(p.Labels) > 0 {
		l := map[string]any{}
		for k, v := range p.Labels {
			l[k] = v
		}
		raw["LABELS"] = l
	}
	st, err := structpb.NewStruct(raw)
	if err != nil {
		return nil, err
	}
	md, err := model.ParseMetadata(st)
	if err != nil {
		return nil, err
	}
	proxy.Metadata = md
	proxy.ConfigNamespace = p.Namespace
	if len(p.Labels) > 0 {
		proxy.Labels = p.Labels
		md.Labels = p.Labels
	}
	if p.Name != "" {
		ns := p.Namespace
		if ns == "" {
			ns = "default"
		}
		proxy.ID = p.Name + "." + ns
	}
	return proxy, nil
}

func runCall(t *testing.T, s *xds.FakeDiscoveryServer, proxy *model.Proxy, file string, c simCall) {
	in := c.Call
	call := simulation.Call{
		Address:    in.Address,
		Port:       in.Port,
		Path:       in.Path,
		Protocol:   simulation.Protocol(in.Protocol),
		TLS:        simulation.TLSMode(in.TLS),
		Alpn:       in.ALPN,
		Sni:        in.SNI,
		HostHeader: in.Host,
		CallMode:   simulation.CallMode(in.Mode),

		MtlsSecretConfigName: c.MtlsSecretConfigName,
	}
	if call.Protocol == "" {
		call.Protocol = simulation.HTTP // README: http is the default
	}
	if call.CallMode == "" {
		if proxy.Type == model.Router {
			call.CallMode = simulation.CallModeGateway
		} else {
			call.CallMode = simulation.CallModeOutbound
		}
	}
	if len(in.Headers) > 0 {
		call.Headers = http.Header{}
		for k, v := range in.Headers {
			call.Headers.Set(k, v)
		}
	}
	var got simulation.Result
	callsTotal++
	// A subtest per call: the simulator stops its *testing.T on what it cannot read.
	ok := t.Run(c.Name, func(t *testing.T) {
		got = simulation.NewSimulation(t, s, proxy).Run(call)
	})
	if !ok {
		fmt.Fprintf(simOut, "FAIL %s %s: istiod's simulator stopped (its message is on stderr)\n", file, c.Name)
		return
	}
	if diffs := compare(c, got); len(diffs) > 0 {
		fmt.Fprintf(simOut, "FAIL %s %s: want %s got %s\n", file, c.Name, wantString(c), gotString(got))
		t.Fail()
		return
	}
	callsPass++
	fmt.Fprintf(simOut, "PASS %s %s\n", file, c.Name)
}

func errText(e error) *string {
	if e == nil {
		return nil
	}
	s := e.Error()
	return &s
}

// compare is traffic.go's Result.Matches on the case's expectation.
func compare(c simCall, r simulation.Result) []string {
	e := c.Expect
	var diffs []string
	ge := errText(r.Error)
	if (e.Error == nil) != (ge == nil) || (ge != nil && *ge != *e.Error) {
		diffs = append(diffs, "error")
	}
	for _, f := range []struct{ name, want, got string }{
		{"listener", e.Listener, r.ListenerMatched},
		{"filterChain", e.FilterChain, r.FilterChainMatched},
		{"routeConfig", e.RouteConfig, r.RouteConfigMatched},
		{"virtualHost", e.VirtualHost, r.VirtualHostMatched},
		{"route", e.Route, r.RouteMatched},
		{"cluster", e.Cluster, r.ClusterMatched},
	} {
		if (c.Strict || f.want != "") && f.want != f.got {
			diffs = append(diffs, f.name)
		}
	}
	return diffs
}

func quoteErr(s *string) string {
	if s == nil {
		return "none"
	}
	return fmt.Sprintf("%q", *s)
}

func wantString(c simCall) string {
	e := c.Expect
	parts := []string{"error: " + quoteErr(e.Error)}
	for _, f := range [][2]string{
		{"listener", e.Listener}, {"filterChain", e.FilterChain}, {"routeConfig", e.RouteConfig},
		{"virtualHost", e.VirtualHost}, {"route", e.Route}, {"cluster", e.Cluster},
	} {
		if c.Strict || f[1] != "" {
			parts = append(parts, fmt.Sprintf("%s: %q", f[0], f[1]))
		}
	}
	if c.Strict {
		parts = append(parts, "strict: true")
	}
	return "{" + strings.Join(parts, ", ") + "}"
}

func gotString(r simulation.Result) string {
	return fmt.Sprintf("{error: %s, listener: %q, filterChain: %q, routeConfig: %q, virtualHost: %q, route: %q, cluster: %q}",
		quoteErr(errText(r.Error)), r.ListenerMatched, r.FilterChainMatched, r.RouteConfigMatched,
		r.VirtualHostMatched, r.RouteMatched, r.ClusterMatched)
}

func checkClusters(file string, c *simCase, clusters []*clusterv3.Cluster) bool {
	ok := true
	byName := map[string]*clusterv3.Cluster{}
	var inbound []string
	for _, cl := range clusters {
		byName[cl.Name] = cl
		if strings.HasPrefix(cl.Name, "inbound|") {
			inbound = append(inbound, cl.Name)
		}
	}
	if c.InboundClusters != nil {
		chkTotal++
		want := append([]string(nil), c.InboundClusters...)
		sort.Strings(want)
		sort.Strings(inbound)
		if strings.Join(want, "\n") == strings.Join(inbound, "\n") {
			chkPass++
			fmt.Fprintf(simOut, "PASS %s inboundClusters\n", file)
		} else {
			fmt.Fprintf(simOut, "FAIL %s inboundClusters: want %q got %q\n", file, want, inbound)
			ok = false
		}
	}
	for _, w := range c.Clusters {
		chkTotal++
		cl := byName[w.Name]
		if cl == nil {
			fmt.Fprintf(simOut, "FAIL %s cluster %s: not generated\n", file, w.Name)
			ok = false
			continue
		}
		gotType := cl.GetType().String()
		if cl.GetClusterType() != nil {
			gotType = cl.GetClusterType().GetName()
		}
		gotPrio := map[string]int{}
		for _, lle := range cl.GetLoadAssignment().GetEndpoints() {
			for _, ep := range lle.GetLbEndpoints() {
				gotPrio[ep.GetEndpoint().GetAddress().GetSocketAddress().GetAddress()] = int(lle.GetPriority())
			}
		}
		typeOK := w.Type == "" || w.Type == gotType
		prioOK := w.Priorities == nil || fmt.Sprint(w.Priorities) == fmt.Sprint(gotPrio)
		if typeOK && prioOK {
			chkPass++
			fmt.Fprintf(simOut, "PASS %s cluster %s\n", file, w.Name)
			continue
		}
		note := ""
		if !prioOK {
			note = " (priorities are read from the cluster's LoadAssignment as istiod generates it; the Go" +
				" test applies loadbalancer.ApplyLocalityLoadBalancer itself, istiod does so only under a" +
				" DestinationRule with outlierDetection and localityLbSetting.failoverPriority, matching proxy labels)"
		}
		fmt.Fprintf(simOut, "FAIL %s cluster %s: want {type: %q, priorities: %v} got {type: %q, priorities: %v}%s\n",
			file, w.Name, w.Type, w.Priorities, gotType, gotPrio, note)
		ok = false
	}
	return ok
}

func checkRoutes(file string, c *simCase, routes []*routev3.RouteConfiguration) bool {
	ok := true
	byName := map[string]*routev3.RouteConfiguration{}
	var names []string
	for _, r := range routes {
		byName[r.Name] = r
		names = append(names, r.Name)
	}
	sort.Strings(names)
	var want []string
	for n := range c.Routes {
		want = append(want, n)
	}
	sort.Strings(want)
	for _, n := range want {
		chkTotal++
		rc := byName[n]
		if rc == nil {
			fmt.Fprintf(simOut, "FAIL %s routes %s: route configuration not generated (have %q)\n", file, n, names)
			ok = false
			continue
		}
		got := map[string][]string{} // as xdstest.ExtractVirtualHosts
		for _, vh := range rc.GetVirtualHosts() {
			var dests []string
			for _, r := range vh.GetRoutes() {
				if dc := r.GetRoute().GetCluster(); dc != "" {
					dests = append(dests, dc)
				}
			}
			sort.Strings(dests)
			for _, d := range vh.GetDomains() {
				got[d] = dests
			}
		}
		var domains []string
		for d := range c.Routes[n] {
			domains = append(domains, d)
		}
		sort.Strings(domains)
		var bad []string
		for _, d := range domains {
			w, g := c.Routes[n][d], got[d]
			if strings.Join(w, "\n") != strings.Join(g, "\n") {
				bad = append(bad, fmt.Sprintf("%q: want %s got %s", d, listString(w), listString(g)))
			}
		}
		if len(bad) == 0 {
			chkPass++
			fmt.Fprintf(simOut, "PASS %s routes %s\n", file, n)
			continue
		}
		var all []string
		for d := range got {
			all = append(all, d)
		}
		sort.Strings(all)
		fmt.Fprintf(simOut, "FAIL %s routes %s: %s (domains: %q)\n", file, n, strings.Join(bad, "; "), all)
		ok = false
	}
	return ok
}

func listString(l []string) string {
	if len(l) == 0 {
		return "null"
	}
	return fmt.Sprintf("%q", l)
}
