// injection-settings: the injector settings Istio's injection golden tests run with,
// rendered from an Istio source tree's charts exactly as those tests render them
// (pkg/kube/inject/webhook_test.go getInjectionSettings: profile "empty" with istiod on),
// for scripts/fetch-istio-data. It writes the `istio-sidecar-injector` ConfigMap (the
// templates and values the injector reads) and the `mesh` key of the `istio` ConfigMap.
//
//	injection-settings -manifests ISTIO/manifests -injector OUT.yaml -mesh OUT.yaml
package main

import (
	"flag"
	"fmt"
	"log"
	"os"

	"sigs.k8s.io/yaml"

	"istio.io/istio/operator/pkg/render"
)

func main() {
	manifests := flag.String("manifests", "", "the manifests/ folder of an Istio source tree")
	injectorOut := flag.String("injector", "", "where to write the istio-sidecar-injector ConfigMap")
	meshOut := flag.String("mesh", "", "where to write the mesh config")
	flag.Parse()
	if *manifests == "" || *injectorOut == "" || *meshOut == "" {
		log.Fatal("usage: injection-settings -manifests DIR -injector FILE -mesh FILE")
	}
	flags := []string{"installPackagePath=" + *manifests, "profile=empty", "components.pilot.enabled=true"}
	sets, _, err := render.GenerateManifest(nil, flags, false, nil, nil)
	if err != nil {
		log.Fatalf("rendering %s: %v", *manifests, err)
	}
	var injector, mesh bool
	for _, set := range sets {
		for _, m := range set.Manifests {
			if m.GetKind() != "ConfigMap" {
				continue
			}
			switch m.GetName() {
			case "istio-sidecar-injector":
				out, err := yaml.Marshal(m.Object)
				if err != nil {
					log.Fatal(err)
				}
				write(*injectorOut, out)
				injector = true
			case "istio":
				data, _ := m.Object["data"].(map[string]any)
				text, ok := data["mesh"].(string)
				if !ok {
					log.Fatalf("the istio ConfigMap has no mesh key")
				}
				write(*meshOut, []byte(text))
				mesh = true
			}
		}
	}
	if !injector || !mesh {
		log.Fatalf("the rendered charts lack a ConfigMap (istio-sidecar-injector %v, istio %v)", injector, mesh)
	}
}

func write(path string, data []byte) {
	if err := os.WriteFile(path, data, 0o644); err != nil {
		log.Fatal(fmt.Errorf("writing %s: %w", path, err))
	}
}
