// rendezvous-client: a go-libp2p peer speaking /rendezvous/1.0.0 (libp2p/specs rendezvous/README.md) to the
// door at RENDEZVOUS_ADDR (a multiaddr ending in /p2p/<door's peer ID>), over TCP with Noise and yamux.
//
// Peer A registers its signed peer record in NAMESPACE and discovers it (every returned record checked with
// record.ConsumeEnvelope); a discover with the returned cookie is empty; peer B (a second host, its own
// connection) registers, and the same cookie now returns B alone; peer C, which only discovers, gets every
// registration as a signed peer record; pages of one walk the namespace; a forged
// cookie and a record of another peer are refused with the spec's statuses; A unregisters, and its next
// discover on the same stream no longer lists it. B stays registered (TTL seconds), for the caller to find
// over HTTP. EXPECT_PEERS (comma-separated peer IDs, registered elsewhere, over HTTP say) must be among the
// discovered. One JSON line per step; exit 1 at the first mismatch.
package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	"os"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/libp2p/go-libp2p"
	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/record"
	"github.com/libp2p/go-libp2p/p2p/muxer/yamux"
	"github.com/libp2p/go-libp2p/p2p/security/noise"
	"github.com/libp2p/go-libp2p/p2p/transport/tcp"

	"holepunch-services/interop/go-rendezvous/internal/report"
	"holepunch-services/interop/go-rendezvous/internal/spec"
)

const requestTimeout = 10 * time.Second

func main() {
	addr, ns := os.Getenv("RENDEZVOUS_ADDR"), os.Getenv("NAMESPACE")
	if addr == "" || ns == "" {
		report.Fail("config", "RENDEZVOUS_ADDR and NAMESPACE must be set")
	}
	ttl := uint64(300)
	if v := os.Getenv("TTL"); v != "" {
		n, err := strconv.ParseUint(v, 10, 64)
		report.Check("config", err)
		ttl = n
	}
	var expected []string
	if v := os.Getenv("EXPECT_PEERS"); v != "" {
		expected = strings.Split(v, ",")
	}
	door, err := peer.AddrInfoFromString(addr)
	report.Check("config", err)
	ctx := context.Background()

	a := connect(ctx, "a", *door)
	defer a.host.Close()
	a.register("register", ns, a.record, ttl, spec.OK, ttl)

	first := a.discover("discover", ns, 0, nil, spec.OK)
	ids := peersOf(first)
	if !slices.Contains(ids, a.id()) {
		report.Fail("discover", "A (%s) is not among %v", a.id(), ids)
	}
	if i := slices.IndexFunc(first.Registrations, func(r spec.Registration) bool {
		return bytes.Equal(r.SignedPeerRecord, a.record)
	}); i < 0 {
		report.Fail("discover", "A's signed peer record is not returned verbatim")
	}
	for _, want := range expected {
		if !slices.Contains(ids, want) {
			report.Fail("discover", "expected peer %s is not among %v", want, ids)
		}
	}
	report.Step("discover", map[string]any{"peers": ids, "expected_seen": expected})

	empty := a.discover("cookie-empty", ns, 0, first.Cookie, spec.OK)
	if len(empty.Registrations) != 0 {
		report.Fail("cookie-empty", "nothing was registered since, yet the cookie returned %v", peersOf(empty))
	}
	report.Step("cookie-empty", map[string]any{"peers": []string{}})

	b := connect(ctx, "b", *door)
	defer b.host.Close()
	b.register("register-b", ns, b.record, ttl, spec.OK, ttl)
	fresh := a.discover("cookie-new", ns, 0, empty.Cookie, spec.OK)
	if got := peersOf(fresh); !slices.Equal(got, []string{b.id()}) {
		report.Fail("cookie-new", "after B registered the cookie returned %v, not B (%s) alone", got, b.id())
	}
	report.Step("cookie-new", map[string]any{"peers": peersOf(fresh)})

	// A go peer that only discovers has told the door nothing on its connection; it must still get the
	// spec's signed peer records (the door tells clients apart by identify's agent version).
	c := connect(ctx, "c", *door)
	defer c.host.Close()
	seen := peersOf(c.discover("discover-only", ns, 0, nil, spec.OK))
	for _, want := range append([]string{a.id(), b.id()}, expected...) {
		if !slices.Contains(seen, want) {
			report.Fail("discover-only", "%s is not among %v", want, seen)
		}
	}
	report.Step("discover-only", map[string]any{"peers": seen})

	var paged []string
	var cookie []byte
	for range 100 {
		page := a.discover("pages", ns, 1, cookie, spec.OK)
		if len(page.Registrations) > 1 {
			report.Fail("pages", "limit 1 returned %d registrations", len(page.Registrations))
		}
		if len(page.Registrations) == 0 {
			break
		}
		paged, cookie = append(paged, peersOf(page)...), page.Cookie
	}
	all := peersOf(a.discover("pages", ns, 0, nil, spec.OK))
	sort.Strings(paged)
	sort.Strings(all)
	if !slices.Equal(paged, all) {
		report.Fail("pages", "pages of one returned %v, the whole namespace is %v", paged, all)
	}
	report.Step("pages", map[string]any{"pages": len(paged)})

	forged := a.discover("forged-cookie", ns, 0, []byte("forged-cookie-AAAAAAAAAAAAAAAAAAAAAAAAAAAA"), spec.EInvalidCookie)
	report.Step("forged-cookie", map[string]any{"status": uint64(forged.Status), "status_text": forged.StatusText})
	// A may register only itself: B's record, validly signed by B, sent on A's connection.
	a.register("not-authorized", ns, b.record, ttl, spec.ENotAuthorized, 0)

	report.Check("unregister", a.send(spec.Unregister(ns)))
	// Unregister has no answer; a discover behind it on the same stream is served after it.
	left := peersOf(a.discover("unregister", ns, 0, nil, spec.OK))
	if slices.Contains(left, a.id()) || !slices.Contains(left, b.id()) {
		report.Fail("unregister", "after A unregistered the namespace lists %v (A %s, B %s)", left, a.id(), b.id())
	}
	report.Step("unregister", map[string]any{"peer": a.id(), "remaining": left})

	a.register("invalid-ttl", ns, a.record, 5, spec.EInvalidTTL, 0)
	a.register("invalid-namespace", strings.Repeat("n", 256), a.record, ttl, spec.EInvalidNamespace, 0)

	// The same again in the way of go-libp2p-rendezvous's client (the go client most peers run): a stream per
	// request, closed after it, and Unregister with the deprecated id, then nothing read back.
	a.oneShot(ctx, "stream-per-request", spec.Register(ns, a.record, ttl), true)
	a.oneShot(ctx, "stream-per-request", spec.UnregisterWithID(ns, []byte(a.host.ID())), false)
	deadline := time.Now().Add(requestTimeout)
	for {
		r := a.oneShot(ctx, "stream-per-request", spec.Discover(ns, 0, nil), true)
		if now := peersOf(r.Discover); !slices.Contains(now, a.id()) {
			break
		} else if time.Now().After(deadline) {
			report.Fail("stream-per-request", "A is still listed after its unregister on a closed stream: %v", now)
		}
		time.Sleep(50 * time.Millisecond)
	}
	report.Step("stream-per-request", map[string]any{"peer": a.id(), "peer_b": b.id()})
}

// client is one go-libp2p host with one /rendezvous/1.0.0 stream to the door, reused for every request.
type client struct {
	host   host.Host
	stream network.Stream
	reader *bufio.Reader
	record []byte // its signed peer record
}

func connect(ctx context.Context, name string, door peer.AddrInfo) *client {
	step := "connect-" + name
	priv, _, err := crypto.GenerateEd25519Key(rand.Reader)
	report.Check(step, err)
	h, err := libp2p.New(libp2p.Identity(priv), libp2p.ListenAddrStrings("/ip4/127.0.0.1/tcp/0"),
		libp2p.Transport(tcp.NewTCPTransport), libp2p.Security(noise.ID, noise.New),
		libp2p.Muxer(yamux.ID, yamux.DefaultTransport))
	report.Check(step, err)
	cctx, cancel := context.WithTimeout(ctx, requestTimeout)
	defer cancel()
	report.Check(step, h.Connect(cctx, door))
	s, err := h.NewStream(cctx, door.ID, spec.Protocol)
	report.Check(step, err)
	envelope, err := record.Seal(peer.PeerRecordFromAddrInfo(peer.AddrInfo{ID: h.ID(), Addrs: h.Addrs()}), priv)
	report.Check(step, err)
	rec, err := envelope.Marshal()
	report.Check(step, err)
	report.Step(step, map[string]any{"peer": h.ID().String(), "addrs": fmt.Sprint(h.Addrs())})
	return &client{host: h, stream: s, reader: bufio.NewReader(s), record: rec}
}

func (c *client) id() string { return c.host.ID().String() }

func (c *client) send(msg []byte) error {
	if err := c.stream.SetDeadline(time.Now().Add(requestTimeout)); err != nil {
		return err
	}
	return spec.WriteFrame(c.stream, msg)
}

func (c *client) request(step string, msg []byte, want uint64) spec.Response {
	report.Check(step, c.send(msg))
	frame, err := spec.ReadFrame(c.reader)
	report.Check(step, err)
	r, err := spec.DecodeResponse(frame)
	report.Check(step, err)
	if r.Type != want {
		report.Fail(step, "answered with message type %d, expected %d", r.Type, want)
	}
	return r
}

func (c *client) register(step, ns string, rec []byte, ttl uint64, status spec.Status, grantedTTL uint64) {
	r := c.request(step, spec.Register(ns, rec, ttl), spec.TypeRegisterResponse)
	if r.Register == nil || r.Register.Status != status || (status == spec.OK && r.Register.TTL != grantedTTL) {
		report.Fail(step, "RegisterResponse %+v; expected status %d, ttl %d", r.Register, status, grantedTTL)
	}
	report.Step(step, map[string]any{"status": uint64(r.Register.Status), "status_text": r.Register.StatusText,
		"ttl": r.Register.TTL})
}

// discover checks the answer's status and every registration in it: in the namespace asked for, with a TTL
// left within the spec's bound, and a signed peer record that go-libp2p accepts.
func (c *client) discover(step, ns string, limit uint64, cookie []byte, status spec.Status) *spec.DiscoverResponse {
	r := c.request(step, spec.Discover(ns, limit, cookie), spec.TypeDiscoverResponse)
	d := r.Discover
	if d == nil || d.Status != status {
		report.Fail(step, "DiscoverResponse %+v; expected status %d", d, status)
	}
	for _, reg := range d.Registrations {
		if reg.Namespace != ns || reg.TTL == 0 || reg.TTL > 72*3600 {
			report.Fail(step, "registration in %q with ttl %d", reg.Namespace, reg.TTL)
		}
		if _, _, err := record.ConsumeEnvelope(reg.SignedPeerRecord, peer.PeerRecordEnvelopeDomain); err != nil {
			report.Fail(step, "a returned signed peer record does not verify: %v", err)
		}
	}
	if status == spec.OK && len(d.Cookie) == 0 {
		report.Fail(step, "no cookie in the answer")
	}
	return d
}

// oneShot opens a stream, sends msg, reads the answer when there is one, and closes the stream.
func (c *client) oneShot(ctx context.Context, step string, msg []byte, answered bool) spec.Response {
	cctx, cancel := context.WithTimeout(ctx, requestTimeout)
	defer cancel()
	s, err := c.host.NewStream(cctx, c.stream.Conn().RemotePeer(), spec.Protocol)
	report.Check(step, err)
	defer s.Close()
	report.Check(step, s.SetDeadline(time.Now().Add(requestTimeout)))
	report.Check(step, spec.WriteFrame(s, msg))
	if !answered {
		return spec.Response{}
	}
	frame, err := spec.ReadFrame(bufio.NewReader(s))
	report.Check(step, err)
	r, err := spec.DecodeResponse(frame)
	report.Check(step, err)
	if (r.Register != nil && r.Register.Status != spec.OK) || (r.Register == nil && r.Discover == nil) ||
		(r.Discover != nil && r.Discover.Status != spec.OK) {
		report.Fail(step, "answer %+v", r)
	}
	return r
}

// peersOf is the peer IDs of a discover answer's records, each already verified by discover.
func peersOf(d *spec.DiscoverResponse) []string {
	ids := []string{}
	for _, reg := range d.Registrations {
		_, rec, err := record.ConsumeEnvelope(reg.SignedPeerRecord, peer.PeerRecordEnvelopeDomain)
		report.Check("peers", err)
		ids = append(ids, rec.(*peer.PeerRecord).PeerID.String())
	}
	return ids
}
