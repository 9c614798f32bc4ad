package push

import "testing"

type fixed string

func (f fixed) publish(string, []byte) error { return nil }
func (f fixed) Advertised() string           { return string(f) }
func (f fixed) Close() error                 { return nil }

// TestBrokerFor: a broker on every interface is given to a vehicle at the
// name it reached the server by; any other address as it is.
func TestBrokerFor(t *testing.T) {
	tests := []struct {
		advertised, host, want string
	}{
		{"mqtts://0.0.0.0:8883", "ota.example.com", "mqtts://ota.example.com:8883"},
		{"mqtts://0.0.0.0:8883", "ota.example.com:443", "mqtts://ota.example.com:8883"},
		{"mqtt://[::]:1883", "[2001:db8::1]:8080", "mqtt://[2001:db8::1]:1883"},
		{"mqtt://127.0.0.1:1883", "ota.example.com", "mqtt://127.0.0.1:1883"},
		{"mqtts://broker.example.com:8883", "ota.example.com", "mqtts://broker.example.com:8883"},
		{"mqtt://0.0.0.0:1883", "", "mqtt://0.0.0.0:1883"},
	}
	for _, tt := range tests {
		s := New(fixed(tt.advertised), nil, nil)
		if got := s.BrokerFor(tt.host); got != tt.want {
			t.Errorf("BrokerFor(%q) with %s = %s, want %s", tt.host, tt.advertised, got, tt.want)
		}
	}
	var off *Service
	if got := off.BrokerFor("x"); got != "" {
		t.Errorf("push off: %q", got)
	}
}
