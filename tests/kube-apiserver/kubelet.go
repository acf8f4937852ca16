package main

// A kubelet's streaming port for one Node, so that `kubectl port-forward` and the
// tools built on it (istioctl reads a pod's Envoy admin through it) work against this
// API server. It is the only part of a kubelet here: the API server proxies
// pods/portforward to the Node's kubelet endpoint, and this answers with the kubelet's
// own port-forward protocol (k8s.io/cri-streaming, SPDY or WebSocket), joining each
// stream to podIP:port. Tests' "pods" are processes on 127.0.0.x, so dialing the pod's
// IP is what entering its network namespace would be for a real kubelet.

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/cri-streaming/pkg/streaming/portforward"
)

// NodeName is the Node whose kubelet this is: a Pod with spec.nodeName set to it can be
// port-forwarded.
const NodeName = "kapi-node"

// startKubelet listens on a free loopback port with the serving certificate the API
// server already trusts (it is for 127.0.0.1) and returns the port.
func startKubelet(ctx context.Context, certFile, keyFile, kubeconfig string) (int, error) {
	pair, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return 0, err
	}
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{pair}, NextProtos: []string{"http/1.1"}})
	if err != nil {
		return 0, err
	}
	rc, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		return 0, err
	}
	client, err := kubernetes.NewForConfig(rc)
	if err != nil {
		return 0, err
	}
	mux := http.NewServeMux()
	// The API server asks for /portForward/{namespace}/{pod}.
	mux.HandleFunc("/portForward/", func(w http.ResponseWriter, req *http.Request) {
		parts := strings.Split(strings.TrimPrefix(req.URL.Path, "/portForward/"), "/")
		if len(parts) < 2 {
			http.Error(w, "want /portForward/{namespace}/{pod}", http.StatusNotFound)
			return
		}
		ns, name := parts[0], parts[1]
		pod, err := client.CoreV1().Pods(ns).Get(req.Context(), name, metav1.GetOptions{})
		if err != nil {
			http.Error(w, err.Error(), http.StatusNotFound)
			return
		}
		if pod.Status.PodIP == "" {
			http.Error(w, fmt.Sprintf("pod %s/%s has no IP", ns, name), http.StatusServiceUnavailable)
			return
		}
		portforward.ServePortForward(w, req, podDialer{ip: pod.Status.PodIP}, ns+"/"+name, string(pod.UID),
			&portforward.V4Options{}, 5*time.Minute, 30*time.Second, []string{portforward.ProtocolV1Name})
	})
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go srv.Serve(ln)
	go func() {
		<-ctx.Done()
		srv.Close()
	}()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

// podDialer joins a forwarded stream to a port on the pod's IP.
type podDialer struct{ ip string }

func (d podDialer) PortForward(ctx context.Context, pod string, _ string, port int32, stream io.ReadWriteCloser) error {
	defer stream.Close()
	var dialer net.Dialer
	conn, err := dialer.DialContext(ctx, "tcp", net.JoinHostPort(d.ip, strconv.Itoa(int(port))))
	if err != nil {
		return fmt.Errorf("pod %s port %d: %w", pod, port, err)
	}
	defer conn.Close()
	done := make(chan struct{}, 2)
	go func() { io.Copy(conn, stream); conn.(*net.TCPConn).CloseWrite(); done <- struct{}{} }()
	go func() { io.Copy(stream, conn); done <- struct{}{} }()
	// Both directions finish, or the forwarding ends (the API server closed the stream).
	select {
	case <-done:
		<-done
	case <-ctx.Done():
	}
	return nil
}

// registerNode creates (or updates) the Node with this kubelet's address and port; its
// status is what the API server reads to find the kubelet.
func registerNode(ctx context.Context, kubeconfig string, port int) error {
	rc, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		return err
	}
	client, err := kubernetes.NewForConfig(rc)
	if err != nil {
		return err
	}
	nodes := client.CoreV1().Nodes()
	node, err := nodes.Get(ctx, NodeName, metav1.GetOptions{})
	if err != nil {
		node, err = nodes.Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: NodeName}}, metav1.CreateOptions{})
		if err != nil {
			return err
		}
	}
	node.Status.Addresses = []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: "127.0.0.1"}}
	node.Status.DaemonEndpoints.KubeletEndpoint.Port = int32(port)
	node.Status.Conditions = []corev1.NodeCondition{{Type: corev1.NodeReady, Status: corev1.ConditionTrue,
		Reason: "KubeletReady", LastHeartbeatTime: metav1.Now(), LastTransitionTime: metav1.Now()}}
	_, err = nodes.UpdateStatus(ctx, node, metav1.UpdateOptions{})
	return err
}
