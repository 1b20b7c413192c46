// Package registration is the body of our HTTP rendezvous's POST /peers (README, "The registration
// format") as a go-libp2p record.Record, so that go-libp2p's own record.Seal signs and marshals it: the
// envelope's domain and payload type are ours, its payload the JSON object.
package registration

import (
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"time"

	"github.com/libp2p/go-libp2p/core/record"
)

const (
	Domain      = "holepunch-services:rendezvous"
	PayloadType = "/holepunch-services/register/1"
)

// Payload is the JSON object, its fields in the README's order. Record is the base64 (standard alphabet,
// padded) of the peer's signed peer record.
type Payload struct {
	Peer   string   `json:"peer"`
	NS     string   `json:"ns"`
	Addrs  []string `json:"addrs"`
	TTL    int      `json:"ttl"`
	TS     int64    `json:"ts"`
	Nonce  string   `json:"nonce"`
	Record string   `json:"record,omitempty"`
}

// New fills the timestamp (Unix milliseconds) and a fresh nonce (16 random bytes, base64url, unpadded).
func New(peer, ns string, addrs []string, ttl int, signedPeerRecord []byte) Payload {
	nonce := make([]byte, 16)
	if _, err := rand.Read(nonce); err != nil {
		panic(err)
	}
	p := Payload{Peer: peer, NS: ns, Addrs: addrs, TTL: ttl, TS: time.Now().UnixMilli(),
		Nonce: base64.RawURLEncoding.EncodeToString(nonce)}
	if signedPeerRecord != nil {
		p.Record = base64.StdEncoding.EncodeToString(signedPeerRecord)
	}
	return p
}

// Record carries payload bytes as they are: Seal signs exactly these bytes, so the README's worked example
// can be reproduced from its payload text.
type Record struct{ Payload []byte }

var _ record.Record = (*Record)(nil)

func (r *Record) Domain() string                 { return Domain }
func (r *Record) Codec() []byte                  { return []byte(PayloadType) }
func (r *Record) MarshalRecord() ([]byte, error) { return r.Payload, nil }
func (r *Record) UnmarshalRecord(b []byte) error { r.Payload = append([]byte(nil), b...); return nil }

func FromPayload(p Payload) (*Record, error) {
	b, err := json.Marshal(p)
	if err != nil {
		return nil, err
	}
	return &Record{Payload: b}, nil
}
