// Command kapi runs a real kube-apiserver (k8s.io/kubernetes, see go.mod)
// backed by an in-process etcd, for integration tests. Nothing else of a
// cluster runs: no scheduler, no controller-manager, and of a kubelet only its
// port-forward endpoint for the Node "kapi-node" (kubelet.go).
//
//	kapi [--port N] [--kubeconfig-out PATH] [-- extra kube-apiserver flags...]
//
// It listens with HTTPS on 127.0.0.1, writes a cluster-admin kubeconfig
// (static bearer token, user "admin" in group system:masters), prints
// "READY <url>" on stdout once /readyz is OK and shuts down cleanly on
// SIGINT/SIGTERM, removing its temporary directory. All logs go to stderr.
package main

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/pflag"
	"go.etcd.io/etcd/server/v3/embed"
	"go.etcd.io/etcd/server/v3/storage/wal"

	"k8s.io/client-go/discovery"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
	"k8s.io/client-go/util/cert"
	"k8s.io/client-go/util/keyutil"
	basecompatibility "k8s.io/component-base/compatibility"
	logsapi "k8s.io/component-base/logs/api/v1"
	"k8s.io/kubernetes/cmd/kube-apiserver/app"
	"k8s.io/kubernetes/cmd/kube-apiserver/app/options"
)

func main() {
	port := flag.Int("port", 0, "HTTPS port on 127.0.0.1 (0 = pick a free one)")
	kubeconfigOut := flag.String("kubeconfig-out", "", "write an admin kubeconfig here (default: <tmpdir>/kubeconfig, printed on stderr)")
	issuer := flag.String("service-account-issuer", "https://kubernetes.default.svc.cluster.local", "service account token issuer")
	audiences := flag.String("api-audiences", "https://kubernetes.default.svc.cluster.local,istio-ca", "comma-separated --api-audiences")
	token := flag.String("token", "", "admin bearer token (default: random)")
	dataDir := flag.String("data-dir", "", "keep etcd's data and the credentials here, so that a restart (same --port) is the same cluster (default: a temporary directory removed on exit)")
	flag.Usage = func() {
		fmt.Fprintf(os.Stderr, "usage: %s [flags] [-- kube-apiserver flags]\n", os.Args[0])
		flag.PrintDefaults()
	}
	flag.Parse()

	if err := run(*port, *kubeconfigOut, *issuer, *audiences, *token, *dataDir, flag.Args()); err != nil {
		fmt.Fprintln(os.Stderr, "kapi:", err)
		os.Exit(1)
	}
}

func run(port int, kubeconfigOut, issuer, audiences, token, dataDir string, extraArgs []string) error {
	// First SIGINT/SIGTERM cancels ctx, which stops the apiserver; a second one kills us.
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	// So does the end of the process that started us (a test killed mid-way): no API
	// server, and no temporary directory, outlives its test.
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func(parent int) {
		for os.Getppid() == parent {
			time.Sleep(time.Second)
		}
		fmt.Fprintln(os.Stderr, "kapi: parent process exited")
		cancel()
	}(os.Getppid())

	dir := dataDir
	if dir == "" {
		tmp, err := os.MkdirTemp("", "kapi-")
		if err != nil {
			return err
		}
		defer os.RemoveAll(tmp)
		dir = tmp
	} else if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	file := func(name string) string { return filepath.Join(dir, name) }

	// --- etcd, in-process, plain HTTP on loopback free ports ---
	etcd, etcdURL, err := startEtcd(file("etcd"))
	if err != nil {
		return fmt.Errorf("etcd: %w", err)
	}
	defer etcd.Close()

	// --- credentials: serving cert, service account key, admin token ---
	// Kept from an earlier run in the same --data-dir: clients (and the tokens the API
	// issued) stay valid across a restart.
	certPEM, keyPEM, saKeyPEM, saved := loadCredentials(file)
	if saved != "" && token == "" {
		token = saved
	}
	if certPEM == nil {
		// Self-signed CA + serving cert for 127.0.0.1/localhost; certPEM is "leaf, CA".
		certPEM, keyPEM, err = cert.GenerateSelfSignedCertKey("127.0.0.1", []net.IP{net.ParseIP("127.0.0.1")}, []string{"localhost"})
		if err != nil {
			return err
		}
		saKey, err := rsa.GenerateKey(rand.Reader, 2048)
		if err != nil {
			return err
		}
		saKeyPEM, err = keyutil.MarshalPrivateKeyToPEM(saKey)
		if err != nil {
			return err
		}
	}
	caPEM, err := caOnly(certPEM)
	if err != nil {
		return err
	}
	if token == "" {
		b := make([]byte, 16)
		rand.Read(b)
		token = hex.EncodeToString(b)
	}
	// token-auth-file CSV: token,user,uid,"group1,group2"
	tokenCSV := token + ",admin,admin,system:masters\n"
	for name, data := range map[string][]byte{"ca.crt": caPEM, "serving.crt": certPEM, "serving.key": keyPEM, "sa.key": saKeyPEM, "tokens.csv": []byte(tokenCSV)} {
		if err := os.WriteFile(file(name), data, 0o600); err != nil {
			return err
		}
	}

	// --- kube-apiserver, configured through its own command-line flags ---
	ln, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port))
	if err != nil {
		return err
	}
	port = ln.Addr().(*net.TCPAddr).Port
	serverURL := fmt.Sprintf("https://127.0.0.1:%d", port)

	s := options.NewServerRunOptions()
	fs := pflag.NewFlagSet("kube-apiserver", pflag.ContinueOnError)
	for _, f := range s.Flags().FlagSets {
		fs.AddFlagSet(f)
	}
	args := []string{
		"--etcd-servers=" + etcdURL,
		"--bind-address=127.0.0.1",
		"--advertise-address=127.0.0.1",
		// The "kubernetes" Endpoints can't hold a loopback IP: don't maintain them.
		"--endpoint-reconciler-type=none",
		"--cert-dir=" + file("certs"),
		"--tls-cert-file=" + file("serving.crt"),
		"--tls-private-key-file=" + file("serving.key"),
		"--token-auth-file=" + file("tokens.csv"),
		"--authorization-mode=RBAC",
		"--service-cluster-ip-range=10.96.0.0/16",
		"--allow-privileged=true",
		"--service-account-issuer=" + issuer,
		"--service-account-key-file=" + file("sa.key"),
		"--service-account-signing-key-file=" + file("sa.key"),
		"--api-audiences=" + audiences,
		// The kubelet of kubelet.go serves with the same certificate.
		"--kubelet-certificate-authority=" + file("ca.crt"),
	}
	if err := fs.Parse(append(args, extraArgs...)); err != nil {
		return err
	}
	// Serve on the listener we already hold (no race for the free port).
	s.SecureServing.Listener, s.SecureServing.BindPort = ln, port

	// What the kube-apiserver cobra command does before Run (see app.NewAPIServerCommand).
	if err := s.GenericServerRunOptions.ComponentGlobalsRegistry.Set(); err != nil {
		return err
	}
	rest.SetDefaultWarningHandler(rest.NoWarnings{})
	featureGate := s.GenericServerRunOptions.ComponentGlobalsRegistry.FeatureGateFor(basecompatibility.DefaultKubeComponent)
	if err := logsapi.ValidateAndApply(s.Logs, featureGate); err != nil {
		return err
	}
	completed, err := s.Complete(ctx)
	if err != nil {
		return err
	}
	if errs := completed.Validate(); len(errs) != 0 {
		return errors.Join(errs...)
	}

	runErr := make(chan error, 1)
	go func() { runErr <- app.Run(ctx, completed) }()

	// --- kubeconfig, then wait for /readyz ---
	if kubeconfigOut == "" {
		kubeconfigOut = file("kubeconfig")
	}
	if err := writeKubeconfig(kubeconfigOut, serverURL, caPEM, token); err != nil {
		return err
	}
	fmt.Fprintln(os.Stderr, "kapi: kubeconfig:", kubeconfigOut)
	if err := waitReady(ctx, kubeconfigOut, runErr); err != nil {
		return err
	}
	kubeletPort, err := startKubelet(ctx, file("serving.crt"), file("serving.key"), kubeconfigOut)
	if err != nil {
		return fmt.Errorf("kubelet: %w", err)
	}
	if err := registerNode(ctx, kubeconfigOut, kubeletPort); err != nil {
		return fmt.Errorf("node %s: %w", NodeName, err)
	}
	fmt.Println("READY", serverURL)

	// --- run until signalled (or the apiserver dies) ---
	select {
	case err := <-runErr:
		return fmt.Errorf("kube-apiserver exited: %w", err)
	case <-ctx.Done():
	}
	fmt.Fprintln(os.Stderr, "kapi: shutting down")
	select {
	case err := <-runErr:
		if err != nil {
			fmt.Fprintln(os.Stderr, "kapi: kube-apiserver:", err)
		}
	case <-time.After(30 * time.Second):
		fmt.Fprintln(os.Stderr, "kapi: kube-apiserver did not stop in 30s")
	}
	return nil // deferred: etcd.Close(), os.RemoveAll(dir)
}

// loadCredentials reads the serving certificate, its key, the service account key and
// the admin token a previous run left (all nil and "" when there are none).
func loadCredentials(file func(string) string) (certPEM, keyPEM, saKeyPEM []byte, token string) {
	read := func(name string) []byte {
		b, err := os.ReadFile(file(name))
		if err != nil {
			return nil
		}
		return b
	}
	certPEM, keyPEM, saKeyPEM = read("serving.crt"), read("serving.key"), read("sa.key")
	if certPEM == nil || keyPEM == nil || saKeyPEM == nil {
		return nil, nil, nil, ""
	}
	if csv := read("tokens.csv"); csv != nil {
		token, _, _ = strings.Cut(string(csv), ",")
	}
	return certPEM, keyPEM, saKeyPEM, token
}

// startEtcd starts a single-member etcd with its data in dir and returns the client URL.
func startEtcd(dir string) (*embed.Etcd, string, error) {
	cfg := embed.NewConfig()
	cfg.Dir = dir
	cfg.LogLevel = "error"
	cfg.UnsafeNoFsync = true // test data: trade durability for speed
	// Preallocate 8 MB WAL segments instead of 64 MB: many servers run side by side.
	wal.SegmentSizeBytes = 8 << 20
	var urls [2]url.URL
	for i := range urls {
		p, err := freePort()
		if err != nil {
			return nil, "", err
		}
		urls[i] = url.URL{Scheme: "http", Host: fmt.Sprintf("127.0.0.1:%d", p)}
	}
	cfg.ListenClientUrls, cfg.AdvertiseClientUrls = urls[:1], urls[:1]
	cfg.ListenPeerUrls, cfg.AdvertisePeerUrls = urls[1:], urls[1:]
	cfg.InitialCluster = cfg.InitialClusterFromName(cfg.Name)

	e, err := embed.StartEtcd(cfg)
	if err != nil {
		return nil, "", err
	}
	select {
	case <-e.Server.ReadyNotify():
		return e, urls[0].String(), nil
	case err := <-e.Err():
		e.Close()
		return nil, "", err
	case <-time.After(60 * time.Second):
		e.Close()
		return nil, "", errors.New("not ready after 60s")
	}
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// caOnly keeps just the CA certificate of a PEM bundle (for certificate-authority-data).
func caOnly(bundle []byte) ([]byte, error) {
	certs, err := cert.ParseCertsPEM(bundle)
	if err != nil {
		return nil, err
	}
	for _, c := range certs {
		if c.IsCA {
			return cert.EncodeCertificates(c)
		}
	}
	return nil, errors.New("no CA certificate in bundle")
}

// writeKubeconfig writes (atomically) a kubeconfig with one context "kapi".
func writeKubeconfig(path, server string, caPEM []byte, token string) error {
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters["kapi"] = &clientcmdapi.Cluster{Server: server, CertificateAuthorityData: caPEM}
	cfg.AuthInfos["admin"] = &clientcmdapi.AuthInfo{Token: token}
	cfg.Contexts["kapi"] = &clientcmdapi.Context{Cluster: "kapi", AuthInfo: "admin", Namespace: "default"}
	cfg.CurrentContext = "kapi"
	tmp := path + ".tmp"
	if err := clientcmd.WriteToFile(*cfg, tmp); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// waitReady polls GET /readyz through the kubeconfig until it answers "ok".
func waitReady(ctx context.Context, kubeconfig string, runErr <-chan error) error {
	rc, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		return err
	}
	rc.Timeout = 5 * time.Second
	dc, err := discovery.NewDiscoveryClientForConfig(rc)
	if err != nil {
		return err
	}
	client := dc.RESTClient()
	deadline := time.After(2 * time.Minute)
	for {
		body, err := client.Get().AbsPath("/readyz").DoRaw(ctx)
		if err == nil && strings.TrimSpace(string(body)) == "ok" {
			return nil
		}
		select {
		case err := <-runErr:
			return fmt.Errorf("kube-apiserver exited: %w", err)
		case <-ctx.Done():
			return ctx.Err()
		case <-deadline:
			return fmt.Errorf("/readyz not ok after 2m: %v", err)
		case <-time.After(200 * time.Millisecond):
		}
	}
}
