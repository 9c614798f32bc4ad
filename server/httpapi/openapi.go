package httpapi

import (
	"net/http"
	"regexp"
	"strings"

	"github.com/gin-gonic/gin"

	"github.com/roadsign/roadsign/server"
	"github.com/roadsign/roadsign/server/webhooks"
)

func roleNames() []string {
	out := make([]string, len(server.AllRoles))
	for i, r := range server.AllRoles {
		out[i] = string(r)
	}
	return out
}

var ginParam = regexp.MustCompile(`[:*]([A-Za-z]+)`)

// OpenAPIPath turns a gin path (/jobs/:id, /repo/*file) into OpenAPI's form.
func OpenAPIPath(p string) string { return ginParam.ReplaceAllString(p, "{$1}") }

// schemas are the request bodies the API keeps (docs/api.md).
var schemas = map[string]any{
	"AccountRequest": obj(map[string]any{
		"roles": map[string]any{"type": "array", "items": enum(roleNames()...), "description": "what the account may do (docs/roles.md); an owner holds no other role"},
		"role":  map[string]any{"type": "string", "enum": roleNames(), "description": "one role (older form of roles)"},
		"name":  str(), "password": map[string]any{"type": "string", "description": "owners only"},
		"regions": map[string]any{"type": "array", "items": str(), "description": "dealers only, and required: the vehicle regions it acts on"},
	}, "name"),
	"TokenRequest": obj(map[string]any{
		"name": str(), "roles": map[string]any{"type": "array", "items": enum(roleNames()...), "description": "a subset of the caller's roles"},
		"expiresIn": map[string]any{"type": "string", "description": "the token's life: 30d, 12h (at most 366d)"},
	}, "name", "roles", "expiresIn"),
	"RefuseRequest": obj(map[string]any{"reason": str()}, "reason"),
	"CampaignChange": obj(map[string]any{"version": str(), "selector": map[string]any{"type": "object"}, "includeNew": map[string]any{"type": "boolean"},
		"waves": map[string]any{"type": "array", "items": map[string]any{"type": "integer"}}}),
	"WebhookRequest": obj(map[string]any{"url": str(), "events": map[string]any{"type": "array", "items": enum(webhooks.Events...)},
		"secret": map[string]any{"type": "string", "description": "16 to 256 characters; signs each delivery (HMAC-SHA256)"}}, "url", "events", "secret"),
	"VehicleRequest": obj(map[string]any{
		"vin": str(), "model": str(), "year": map[string]any{"type": "integer"}, "region": str(),
		"publicKey": map[string]any{"type": "string", "description": "ed25519 public key, base64"},
		"ecus":      map[string]any{"type": "array", "items": obj(map[string]any{"type": enum("head-unit", "dcm"), "serial": str(), "hardwareId": str()}, "type", "serial", "hardwareId")},
	}, "vin", "model", "year", "region", "publicKey", "ecus"),
	"JobRequest": obj(map[string]any{
		"vin": str(), "vins": map[string]any{"type": "array", "items": str(), "description": "instead of vin: the same job for many vehicles"}, "ecu": map[string]any{"type": "string", "description": "dcm, head-unit or an ECU serial"},
		"version": map[string]any{"type": "string", "description": "a version such as 1.1.0, or latest"},
		"forced":  map[string]any{"type": "boolean"}, "reason": str(),
	}, "reason"),
	"JobEvent": obj(map[string]any{
		"kind":    enum("downloading", "installing", "rebooting", "succeeded", "failed", "rolled_back"),
		"percent": map[string]any{"type": "integer"}, "message": str(),
	}, "kind"),
	"SignedManifest": obj(map[string]any{
		"signed":    map[string]any{"type": "string", "format": "byte", "description": "the manifest's JSON bytes"},
		"signature": map[string]any{"type": "string", "format": "byte", "description": "ed25519 signature of signed"},
	}, "signed", "signature"),
	"PublishRequest": obj(map[string]any{
		"imageRoots":    map[string]any{"type": "array", "items": map[string]any{"type": "object"}},
		"targets":       map[string]any{"type": "object"},
		"directorRoots": map[string]any{"type": "array", "items": map[string]any{"type": "object"}},
	}),
	"LinkRequest":     obj(map[string]any{"vin": str(), "code": str()}, "vin", "code"),
	"TransferRequest": obj(map[string]any{"owner": str(), "subscriptionEnds": map[string]any{"type": "string", "format": "date-time"}}, "owner"),
	"AuthRequest":     obj(map[string]any{"challenge": str(), "firmware": map[string]any{"type": "array", "items": obj(map[string]any{"serial": str(), "sha256": str()})}}),
	"PasswordRequest": obj(map[string]any{"current": str(), "new": str()}, "current", "new"),
	"CampaignRequest": obj(map[string]any{
		"name": str(), "ecu": enum("head-unit", "dcm"), "version": str(),
		"selector": obj(map[string]any{"models": strs(), "years": map[string]any{"type": "array", "items": map[string]any{"type": "integer"}},
			"regions": strs(), "hardwareIds": strs(), "vins": strs()}),
		"includeNew": map[string]any{"type": "boolean"},
		"waves":      map[string]any{"type": "array", "items": map[string]any{"type": "integer"}, "description": "cumulative percentages, ending at 100"},
		"minSamples": map[string]any{"type": "integer"}, "successThreshold": map[string]any{"type": "number"}, "failureThreshold": map[string]any{"type": "number"},
		"soak": map[string]any{"type": "string", "description": "a duration such as 1h"}, "maxPerMinute": map[string]any{"type": "integer"},
		"consent": enum("none", "owner"),
		"seed":    map[string]any{"type": "integer", "description": "fixes the random order of vehicles, to rehearse a rollout exactly"},
		"window":  obj(map[string]any{"start": str(), "end": str(), "tz": str()}, "start", "end", "tz"),
	}, "name", "ecu", "version"),
	"ConsentRequest": obj(map[string]any{"campaign": str(), "decision": enum("accept", "decline")}, "campaign", "decision"),
	"ClaimDecision":  obj(map[string]any{"decision": enum("accept", "reject"), "reason": str()}, "decision"),
	"ReplaceRequest": obj(map[string]any{"serial": str(), "hardwareId": str(), "publicKey": str(), "reason": str()}, "serial", "hardwareId", "publicKey", "reason"),
	"Error":          obj(map[string]any{"error": obj(map[string]any{"code": str(), "message": str()}, "code", "message")}, "error"),
}

func str() map[string]any { return map[string]any{"type": "string"} }

func strs() map[string]any { return map[string]any{"type": "array", "items": str()} }

func enum(v ...string) map[string]any { return map[string]any{"type": "string", "enum": v} }

func obj(props map[string]any, required ...string) map[string]any {
	o := map[string]any{"type": "object", "properties": props}
	if len(required) > 0 {
		o["required"] = required
	}
	return o
}

// OpenAPI builds the OpenAPI 3 document from the route table.
func (a *api) OpenAPI() map[string]any {
	paths := map[string]map[string]any{}
	for _, rt := range a.routes() {
		p := OpenAPIPath(rt.Path)
		if paths[p] == nil {
			paths[p] = map[string]any{}
		}
		op := map[string]any{
			"summary":           rt.Summary,
			"operationId":       strings.ToLower(rt.Method) + strings.NewReplacer("/", "_", "{", "", "}", "", ".", "_").Replace(p),
			"x-roadsign-access": rt.Who,
			"responses": map[string]any{
				"default": map[string]any{"description": "error", "content": map[string]any{"application/json": map[string]any{"schema": map[string]any{"$ref": "#/components/schemas/Error"}}}},
				"200":     map[string]any{"description": "success"},
			},
		}
		var sec []map[string][]string
		for _, w := range rt.Who {
			switch w {
			case Admin, Dealer, Owner:
				if len(sec) == 0 || sec[0]["bearer"] == nil {
					sec = append([]map[string][]string{{"bearer": {}}}, sec...)
				}
			case Vehicle:
				sec = append(sec, map[string][]string{"vehicle": {}})
			}
		}
		if sec != nil {
			op["security"] = sec
		}
		if rt.Schema != "" {
			op["requestBody"] = map[string]any{"required": true, "content": map[string]any{"application/json": map[string]any{"schema": map[string]any{"$ref": "#/components/schemas/" + rt.Schema}}}}
		}
		var params []map[string]any
		for _, m := range ginParam.FindAllStringSubmatch(rt.Path, -1) {
			params = append(params, map[string]any{"name": m[1], "in": "path", "required": true, "schema": str()})
		}
		if params != nil {
			op["parameters"] = params
		}
		paths[p][strings.ToLower(rt.Method)] = op
	}
	return map[string]any{
		"openapi": "3.0.3",
		"info":    map[string]any{"title": "Roadsign API", "version": "1", "description": "Firmware signing, distribution and installation for vehicle ECUs. Errors are {\"error\":{\"code\",\"message\"}}."},
		"paths":   paths,
		"components": map[string]any{
			"securitySchemes": map[string]any{
				"bearer":  map[string]any{"type": "http", "scheme": "bearer"},
				"vehicle": map[string]any{"type": "apiKey", "in": "header", "name": "Authorization", "description": "RoadsignVehicle vin=VIN,ts=UNIX,sig=ed25519(method, path, vin, ts, sha256(body))"},
			},
			"schemas": schemas,
		},
	}
}

func (a *api) openapi(c *gin.Context) { c.JSON(http.StatusOK, a.OpenAPI()) }
