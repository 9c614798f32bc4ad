package httpapi

import (
	"encoding/json"
	"log/slog"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/gin-gonic/gin"
	"github.com/prometheus/client_golang/prometheus"
)

// TestOpenAPIMatchesRoutes checks the OpenAPI document against the routes
// gin really serves: same set of method+path, every operation summarized
// and its access stated, every referenced schema defined.
func TestOpenAPIMatchesRoutes(t *testing.T) {
	h := New(Deps{Metrics: prometheus.NewRegistry(), Log: slog.New(slog.DiscardHandler), Now: time.Now})
	engine := h.(headPath).next.(*gin.Engine)
	var served []string
	for _, r := range engine.Routes() {
		served = append(served, r.Method+" "+OpenAPIPath(r.Path))
	}
	a := &api{}
	doc := a.OpenAPI()
	raw, err := json.Marshal(doc)
	if err != nil {
		t.Fatalf("document does not encode: %v", err)
	}
	var parsed struct {
		OpenAPI    string                               `json:"openapi"`
		Paths      map[string]map[string]map[string]any `json:"paths"`
		Components struct {
			Schemas map[string]any `json:"schemas"`
		} `json:"components"`
	}
	if err := json.Unmarshal(raw, &parsed); err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(parsed.OpenAPI, "3.") {
		t.Fatalf("openapi version %q", parsed.OpenAPI)
	}
	var documented []string
	for p, ops := range parsed.Paths {
		for m, op := range ops {
			documented = append(documented, strings.ToUpper(m)+" "+p)
			if s, _ := op["summary"].(string); s == "" {
				t.Errorf("%s %s has no summary", m, p)
			}
			if op["x-roadsign-access"] == nil {
				t.Errorf("%s %s does not say who may call it", m, p)
			}
			if rb, ok := op["requestBody"].(map[string]any); ok {
				ref := rb["content"].(map[string]any)["application/json"].(map[string]any)["schema"].(map[string]any)["$ref"].(string)
				if _, ok := parsed.Components.Schemas[strings.TrimPrefix(ref, "#/components/schemas/")]; !ok {
					t.Errorf("%s %s references undefined schema %s", m, p, ref)
				}
			}
			for _, param := range strings.Split(p, "/") {
				if strings.HasPrefix(param, "{") && op["parameters"] == nil {
					t.Errorf("%s %s does not declare its path parameters", m, p)
				}
			}
		}
	}
	sort.Strings(served)
	sort.Strings(documented)
	if strings.Join(served, "\n") != strings.Join(documented, "\n") {
		t.Fatalf("served routes:\n%s\n\ndocumented routes:\n%s", strings.Join(served, "\n"), strings.Join(documented, "\n"))
	}
}
