// seal: go-libp2p's record.Seal against our HTTP rendezvous. It seals a registration in the README's format
// for a fresh Ed25519 key, with the key's signed peer record inside, POSTs it to RENDEZVOUS_URL, reads the
// namespace back and verifies the returned SignedPeerRecord with record.ConsumeEnvelope; then it POSTs a
// registration whose signature was tampered with and expects the documented refusal, bad_signature, with
// nothing changed. One JSON line per step; exit 1 at the first mismatch.
//
// With -example-seed and -example-payload it only seals that payload with that Ed25519 seed and prints the
// envelope (base64), for the README's worked example to be checked byte for byte.
package main

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"flag"
	"io"
	"net/http"
	"net/url"
	"os"
	"slices"
	"time"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/record"
	ma "github.com/multiformats/go-multiaddr"

	"holepunch-services/interop/go-rendezvous/internal/registration"
	"holepunch-services/interop/go-rendezvous/internal/report"
)

const ttl = 300

var client = &http.Client{Timeout: 10 * time.Second}

func main() {
	seed := flag.String("example-seed", "", "hex Ed25519 seed: seal -example-payload with it and print the envelope")
	payload := flag.String("example-payload", "", "the payload to seal with -example-seed, byte for byte")
	flag.Parse()
	if *seed != "" {
		sealExample(*seed, *payload)
		return
	}
	base, ns := os.Getenv("RENDEZVOUS_URL"), os.Getenv("NAMESPACE")
	if base == "" || ns == "" {
		report.Fail("config", "RENDEZVOUS_URL and NAMESPACE must be set")
	}
	priv, _, err := crypto.GenerateEd25519Key(rand.Reader)
	report.Check("key", err)
	id, err := peer.IDFromPrivateKey(priv)
	report.Check("key", err)
	addrs := []string{"/ip4/203.0.113.7/tcp/4001", "/ip4/203.0.113.7/udp/4001/quic-v1"}

	spr := signedPeerRecord(priv, id, addrs)
	body := sealRegistration(priv, registration.New(id.String(), ns, addrs, ttl, spr))
	status, answer := post(base, body)
	if status != http.StatusCreated || answer["ID"] != id.String() || answer["Namespace"] != ns ||
		answer["TTL"] != float64(ttl) {
		report.Fail("register", "POST /peers answered %d %v", status, answer)
	}
	report.Step("register", map[string]any{"peer": id.String(), "status": status, "envelope_bytes": len(body)})

	listed := findPeer("discover", base, ns, id)
	if !slices.Equal(listed.Addrs, addrs) {
		report.Fail("discover", "GET /peers lists addrs %v, registered %v", listed.Addrs, addrs)
	}
	raw, err := base64.StdEncoding.DecodeString(listed.SignedPeerRecord)
	report.Check("discover", err)
	if !bytes.Equal(raw, spr) {
		report.Fail("discover", "SignedPeerRecord is not the record sent, verbatim")
	}
	verifyPeerRecord(raw, priv, id, addrs)

	// A tampered signature: the marshalled envelope ends with its signature (field 5), so its last byte is
	// the signature's. The other addresses show whether anything of it was stored.
	tampered := sealRegistration(priv, registration.New(id.String(), ns, []string{"/ip4/203.0.113.8/tcp/4001"}, ttl,
		signedPeerRecord(priv, id, []string{"/ip4/203.0.113.8/tcp/4001"})))
	tampered[len(tampered)-1] ^= 0x01
	status, answer = post(base, tampered)
	if status != http.StatusBadRequest || answer["error"] != "bad_signature" {
		report.Fail("tampered", "a tampered signature got %d %v, not 400 bad_signature", status, answer)
	}
	if after := findPeer("unchanged", base, ns, id); !slices.Equal(after.Addrs, addrs) {
		report.Fail("tampered", "the refused registration changed the stored one: %v", after.Addrs)
	}
	report.Step("tampered", map[string]any{"status": status, "error": answer["error"]})
}

// signedPeerRecord is the key's RFC 0003 peer record, sealed by go-libp2p (domain libp2p-peer-record).
func signedPeerRecord(priv crypto.PrivKey, id peer.ID, addrs []string) []byte {
	info := peer.AddrInfo{ID: id}
	for _, a := range addrs {
		info.Addrs = append(info.Addrs, ma.StringCast(a))
	}
	envelope, err := record.Seal(peer.PeerRecordFromAddrInfo(info), priv)
	report.Check("peer-record", err)
	b, err := envelope.Marshal()
	report.Check("peer-record", err)
	return b
}

func sealRegistration(priv crypto.PrivKey, p registration.Payload) []byte {
	rec, err := registration.FromPayload(p)
	report.Check("seal", err)
	envelope, err := record.Seal(rec, priv)
	report.Check("seal", err)
	b, err := envelope.Marshal()
	report.Check("seal", err)
	return b
}

// verifyPeerRecord checks the returned record as any go-libp2p peer would: ConsumeEnvelope checks the
// signature under the peer-record domain and decodes the PeerRecord its payload type names.
func verifyPeerRecord(raw []byte, priv crypto.PrivKey, id peer.ID, addrs []string) {
	envelope, rec, err := record.ConsumeEnvelope(raw, peer.PeerRecordEnvelopeDomain)
	report.Check("consume-envelope", err)
	pr, ok := rec.(*peer.PeerRecord)
	if !ok {
		report.Fail("consume-envelope", "the record is a %T, not a peer record", rec)
	}
	signer, err := peer.IDFromPublicKey(envelope.PublicKey)
	report.Check("consume-envelope", err)
	var got []string
	for _, a := range pr.Addrs {
		got = append(got, a.String())
	}
	if pr.PeerID != id || signer != id || !envelope.PublicKey.Equals(priv.GetPublic()) || !slices.Equal(got, addrs) {
		report.Fail("consume-envelope", "record of %s signed by %s with addrs %v; expected %s and %v",
			pr.PeerID, signer, got, id, addrs)
	}
	report.Step("consume-envelope", map[string]any{"peer": pr.PeerID.String(), "addrs": got, "seq": pr.Seq})
}

func post(base string, body []byte) (int, map[string]any) {
	resp, err := client.Post(base+"/peers", "application/octet-stream", bytes.NewReader(body))
	report.Check("post", err)
	defer resp.Body.Close()
	var answer map[string]any
	raw, err := io.ReadAll(resp.Body)
	report.Check("post", err)
	if err := json.Unmarshal(raw, &answer); err != nil {
		report.Fail("post", "answer %d is not JSON: %q", resp.StatusCode, raw)
	}
	return resp.StatusCode, answer
}

type listedPeer struct {
	ID               string
	Addrs            []string
	TTL              int
	SignedPeerRecord string
}

func findPeer(step, base, ns string, id peer.ID) listedPeer {
	resp, err := client.Get(base + "/peers?" + url.Values{"namespace": {ns}, "limit": {"1000"}}.Encode())
	report.Check(step, err)
	defer resp.Body.Close()
	var page struct{ Peers []listedPeer }
	if resp.StatusCode != http.StatusOK {
		report.Fail(step, "GET /peers answered %d", resp.StatusCode)
	}
	report.Check(step, json.NewDecoder(resp.Body).Decode(&page))
	for _, p := range page.Peers {
		if p.ID == id.String() {
			report.Step(step, map[string]any{"peer": p.ID, "addrs": p.Addrs, "ttl": p.TTL})
			return p
		}
	}
	report.Fail(step, "%s is not among the %d peers of %q", id, len(page.Peers), ns)
	return listedPeer{}
}

func sealExample(seedHex, payload string) {
	seed, err := hex.DecodeString(seedHex)
	if err != nil || len(seed) != ed25519.SeedSize {
		report.Fail("example", "-example-seed must be %d bytes of hex", ed25519.SeedSize)
	}
	priv, err := crypto.UnmarshalEd25519PrivateKey(ed25519.NewKeyFromSeed(seed))
	report.Check("example", err)
	envelope, err := record.Seal(&registration.Record{Payload: []byte(payload)}, priv)
	report.Check("example", err)
	b, err := envelope.Marshal()
	report.Check("example", err)
	report.Step("example", map[string]any{"envelope": base64.StdEncoding.EncodeToString(b)})
}
