// The go-libp2p interop peer (issue 15): a listener, a dialer or a relay, configured by environment
// variables only, printing one JSON object per line on stdout (see /tmp/interop-contract.md, summarised in
// the README's Interop section). Logs go to stderr (GOLOG_LOG_LEVEL=debug for go-libp2p's own).
package main

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/libp2p/go-libp2p"
	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	rcmgr "github.com/libp2p/go-libp2p/p2p/host/resource-manager"
	"github.com/libp2p/go-libp2p/p2p/muxer/yamux"
	"github.com/libp2p/go-libp2p/p2p/net/swarm"
	"github.com/libp2p/go-libp2p/p2p/protocol/circuitv2/client"
	"github.com/libp2p/go-libp2p/p2p/protocol/holepunch"
	"github.com/libp2p/go-libp2p/p2p/protocol/ping"
	"github.com/libp2p/go-libp2p/p2p/security/noise"
	libp2pquic "github.com/libp2p/go-libp2p/p2p/transport/quic"
	"github.com/libp2p/go-libp2p/p2p/transport/tcp"
	ma "github.com/multiformats/go-multiaddr"
	manet "github.com/multiformats/go-multiaddr/net"
	mss "github.com/multiformats/go-multistream"
)

var outMu sync.Mutex

// emit prints one JSON line on stdout (os.Stdout is unbuffered: the line is out at once).
func emit(fields map[string]any) {
	line, _ := json.Marshal(fields)
	outMu.Lock()
	defer outMu.Unlock()
	os.Stdout.Write(append(line, '\n'))
}

func logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, time.Now().Format("15:04:05.000")+" go-peer: "+format+"\n", args...)
}

func fail(format string, args ...any) {
	logf(format, args...)
	os.Exit(2)
}

func env(name, fallback string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return fallback
}

func isRelayed(a ma.Multiaddr) bool { return strings.Contains(a.String(), "/p2p-circuit") }

// treatDocumentationRangesAsPublic: the NAT lab's "internet" is the RFC 5737 documentation ranges, which
// go-multiaddr lists as unroutable. go-libp2p's hole punching sends, and waits for, public addresses only
// (holepunch.Service registers /libp2p/dcutr once HolePunchAddrs, filtered by manet.IsPublicAddr, is
// non-empty), so without this it would never punch in the lab. Our Python worker has the same switch
// (PUBLIC_NETWORKS). Only the lab's ranges are taken out; private ranges stay private.
func treatDocumentationRangesAsPublic() {
	doc := []string{"192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24"}
	manet.Unroutable4 = slices.DeleteFunc(manet.Unroutable4, func(n *net.IPNet) bool {
		return slices.Contains(doc, n.String())
	})
}

func identity() crypto.PrivKey {
	seed, err := hex.DecodeString(env("SEED", ""))
	if err != nil || len(seed) != ed25519.SeedSize {
		if os.Getenv("SEED") != "" {
			fail("SEED must be 64 hex characters (a 32-byte Ed25519 seed)")
		}
		seed = make([]byte, ed25519.SeedSize)
		rand.Read(seed)
	}
	key, err := crypto.UnmarshalEd25519PrivateKey(ed25519.NewKeyFromSeed(seed))
	if err != nil {
		fail("key: %v", err)
	}
	return key
}

func main() {
	treatDocumentationRangesAsPublic()
	mode, transport := env("MODE", ""), env("TRANSPORT", "tcp")
	timeoutS, err := strconv.ParseFloat(env("TIMEOUT_S", "30"), 64)
	if err != nil {
		fail("TIMEOUT_S: %v", err)
	}
	started := time.Now()
	deadline := started.Add(time.Duration(timeoutS * float64(time.Second)))
	ip, port := env("LISTEN_IP", "0.0.0.0"), env("LISTEN_PORT", "0")

	opts := []libp2p.Option{
		libp2p.Identity(identity()),
		libp2p.Security(noise.ID, noise.New), // noise only: never plaintext
		libp2p.Muxer(yamux.ID, yamux.DefaultTransport),
		libp2p.Ping(true),
		libp2p.DisableMetrics(),
	}
	switch transport {
	case "tcp":
		opts = append(opts, libp2p.Transport(tcp.NewTCPTransport),
			libp2p.ListenAddrStrings(fmt.Sprintf("/ip4/%s/tcp/%s", ip, port)))
	case "quic":
		opts = append(opts, libp2p.Transport(libp2pquic.NewTransport),
			libp2p.ListenAddrStrings(fmt.Sprintf("/ip4/%s/udp/%s/quic-v1", ip, port)))
	default:
		fail("TRANSPORT must be tcp or quic, not %q", transport)
	}
	switch mode {
	case "relay":
		opts = append(opts, libp2p.EnableRelayService(), libp2p.ForceReachabilityPublic(),
			libp2p.ResourceManager(labResourceManager()))
	case "listener", "dialer":
		opts = append(opts, libp2p.EnableRelay(), libp2p.EnableHolePunching(), libp2p.ForceReachabilityPrivate())
	default:
		fail("MODE must be listener, dialer or relay, not %q", mode)
	}
	h, err := libp2p.New(opts...)
	if err != nil {
		fail("host: %v", err)
	}
	defer h.Close()
	addrs := []string{}
	for _, a := range h.Network().ListenAddresses() {
		if !isRelayed(a) { // the circuit transport "listens" on /p2p-circuit: not an address of ours
			addrs = append(addrs, a.String())
		}
	}
	emit(map[string]any{"event": "listening", "peer_id": h.ID().String(), "addrs": addrs})

	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)
	ctx, cancel := context.WithDeadline(context.Background(), deadline)
	defer cancel()
	switch mode {
	case "relay":
		<-stop
	case "listener":
		listen(ctx, h, stop)
	case "dialer":
		code := dial(ctx, h)
		h.Close() // close the connections (a QUIC one would linger at the relay until its idle timeout)
		os.Exit(code)
	}
}

// labResourceManager is go-libp2p's default resource manager but for its limit of 8 connections per IPv4
// address: in the NAT lab every listener shares router A's address and every dialer router B's, and a
// dialer that exits without closing leaves its QUIC connection open at the relay until the idle timeout,
// so after a few cells the relay refused new peers (quic-go's CONNECTION_REFUSED, seen in
// rust->rust/quic/go-relay). The relay's own limits (reservations, circuit duration and bytes) stay default.
func labResourceManager() network.ResourceManager {
	limits := rcmgr.DefaultLimits
	libp2p.SetDefaultServiceLimits(&limits)
	perAddress := []rcmgr.ConnLimitPerSubnet{{PrefixLength: 32, ConnCount: 1024}}
	rm, err := rcmgr.NewResourceManager(rcmgr.NewFixedLimiter(limits.AutoScale()), rcmgr.WithLimitPerSubnet(perAddress, nil))
	if err != nil {
		fail("resource manager: %v", err)
	}
	return rm
}

func relayInfo() *peer.AddrInfo {
	addr, err := ma.NewMultiaddr(env("RELAY_ADDR", ""))
	if err != nil {
		fail("RELAY_ADDR: %v", err)
	}
	info, err := peer.AddrInfoFromP2pAddr(addr)
	if err != nil {
		fail("RELAY_ADDR: %v", err)
	}
	return info
}

// waitForHolePunching: go-libp2p registers the DCUtR handler only once it knows a public address of its
// own (from identify with the relay); a relayed connection opened before then never punches.
func waitForHolePunching(ctx context.Context, h host.Host) error {
	for !slices.Contains(h.Mux().Protocols(), holepunch.Protocol) {
		select {
		case <-ctx.Done():
			return errors.New("no public address observed: /libp2p/dcutr never registered")
		case <-time.After(50 * time.Millisecond):
		}
	}
	return nil
}

// connectRelay connects to the relay, retrying until ctx ends: a first QUIC dial that loses its handshake
// puts the relay into the swarm's dial backoff, which is cleared before each retry.
func connectRelay(ctx context.Context, h host.Host, info *peer.AddrInfo) error {
	for {
		attempt, cancel := context.WithTimeout(ctx, 5*time.Second)
		err := h.Connect(attempt, *info)
		cancel()
		if err == nil {
			return nil
		}
		logf("relay dial failed: %v", err)
		if ctx.Err() != nil {
			return fmt.Errorf("cannot reach the relay: %w", err)
		}
		clearBackoff(h, info.ID)
		time.Sleep(200 * time.Millisecond)
	}
}

func clearBackoff(h host.Host, p peer.ID) {
	if sw, ok := h.Network().(*swarm.Swarm); ok {
		sw.Backoff().Clear(p)
	}
}

func listen(ctx context.Context, h host.Host, stop chan os.Signal) {
	info := relayInfo()
	h.Network().Notify(&network.NotifyBundle{ConnectedF: func(_ network.Network, c network.Conn) {
		if c.RemotePeer() != info.ID && !isRelayed(c.RemoteMultiaddr()) {
			emit(map[string]any{"event": "direct", "peer": c.RemotePeer().String(),
				"remote_addr": c.RemoteMultiaddr().String()})
		}
	}})
	if err := connectRelay(ctx, h, info); err != nil {
		fail("%v", err)
	}
	if err := waitForHolePunching(ctx, h); err != nil {
		fail("%v", err)
	}
	for {
		_, err := client.Reserve(ctx, h, *info)
		if err == nil {
			break
		}
		logf("reservation failed: %v", err)
		if ctx.Err() != nil {
			fail("no reservation: %v", err)
		}
		time.Sleep(500 * time.Millisecond)
	}
	emit(map[string]any{"event": "reserved"})
	<-stop // the listener serves until told to stop; TIMEOUT_S bounds only its setup
}

func directConn(h host.Host, p peer.ID) network.Conn {
	for _, c := range h.Network().ConnsToPeer(p) {
		if !isRelayed(c.RemoteMultiaddr()) {
			return c
		}
	}
	return nil
}

func dial(ctx context.Context, h host.Host) int {
	result := func(path, why string) int {
		emit(map[string]any{"event": "result", "path": path, "error": why})
		return 1
	}
	info := relayInfo()
	remote, err := peer.Decode(env("REMOTE_PEER", ""))
	if err != nil {
		fail("REMOTE_PEER: %v", err)
	}
	if err := connectRelay(ctx, h, info); err != nil {
		return result("none", err.Error())
	}
	if err := waitForHolePunching(ctx, h); err != nil {
		return result("none", err.Error())
	}
	circuit, err := ma.NewMultiaddr(fmt.Sprintf("%s/p2p-circuit/p2p/%s", env("RELAY_ADDR", ""), remote))
	if err != nil {
		fail("circuit address: %v", err)
	}
	target, _ := peer.AddrInfoFromP2pAddr(circuit)
	dialStart := time.Now()
	for {
		attempt, cancel := context.WithTimeout(network.WithAllowLimitedConn(ctx, "relayed dial"), 10*time.Second)
		err = h.Connect(attempt, *target)
		cancel()
		if err == nil {
			break
		}
		logf("relayed dial failed: %v", err)
		if ctx.Err() != nil {
			return result("none", "relayed dial: "+err.Error())
		}
		clearBackoff(h, remote)
		time.Sleep(200 * time.Millisecond)
	}
	relayedAt := time.Now()
	emit(map[string]any{"event": "relayed", "ms": ms(relayedAt.Sub(dialStart))})

	var direct network.Conn
	for direct = directConn(h, remote); direct == nil; direct = directConn(h, remote) {
		select {
		case <-ctx.Done():
			return result("relayed", "no direct connection before TIMEOUT_S (DCUtR did not succeed)")
		case <-time.After(10 * time.Millisecond):
		}
	}
	toDirect := time.Since(relayedAt)
	rtt, err := pingOver(ctx, direct)
	if err != nil {
		return result("relayed", "ping over the direct connection: "+err.Error())
	}
	emit(map[string]any{"event": "result", "path": "direct", "time_to_direct_ms": ms(toDirect),
		"rtt_ms": ms(rtt), "remote_addr": direct.RemoteMultiaddr().String()})
	return 0
}

// pingOver runs one /ipfs/ping/1.0.0 round trip on a stream of this very connection, so the RTT is the
// direct path's and not whatever connection the host would pick.
func pingOver(ctx context.Context, c network.Conn) (time.Duration, error) {
	s, err := c.NewStream(ctx)
	if err != nil {
		return 0, err
	}
	defer s.Close()
	s.SetDeadline(time.Now().Add(10 * time.Second))
	s.SetProtocol(ping.ID)
	if err := mss.SelectProtoOrFail(ping.ID, s); err != nil {
		return 0, err
	}
	payload := make([]byte, ping.PingSize)
	rand.Read(payload)
	echo := make([]byte, ping.PingSize)
	began := time.Now()
	if _, err := s.Write(payload); err != nil {
		return 0, err
	}
	if _, err := io.ReadFull(s, echo); err != nil {
		return 0, err
	}
	rtt := time.Since(began)
	if !bytes.Equal(payload, echo) {
		return 0, errors.New("ping answer differs")
	}
	return rtt, nil
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
