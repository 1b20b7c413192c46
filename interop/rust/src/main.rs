//! The rust-libp2p interop peer (issue 15): MODE=listener|dialer|relay over TRANSPORT=tcp|quic, configured by
//! the environment and reporting JSON lines on stdout, as tests/interop.py and the interop contract expect.
use std::{
    collections::HashMap,
    net::IpAddr,
    process::ExitCode,
    time::{Duration, Instant},
};

use futures::StreamExt;
use libp2p::{
    core::{multiaddr::Protocol, ConnectedPoint},
    dcutr, identify, noise, ping, relay,
    swarm::{behaviour::toggle::Toggle, ConnectionId, NetworkBehaviour, SwarmEvent},
    tcp, yamux, Multiaddr, PeerId, Swarm, SwarmBuilder,
};
use serde_json::json;
use tokio::signal::unix::{signal, SignalKind};

use holepunch_interop::{emit, init_logs, keypair_from_env, var};

/// How long NewListenAddr events are gathered before "listening" is printed: a 0.0.0.0 listener reports one
/// address per interface, in a burst.
const LISTEN_GATHER: Duration = Duration::from_millis(100);
/// At exit: how long connections get to close, and how long the closing frames get to leave.
const CLOSE_WAIT: Duration = Duration::from_secs(1);
const CLOSE_FLUSH: Duration = Duration::from_millis(50);

#[derive(Clone, Copy, PartialEq, Debug)]
enum Mode {
    Listener,
    Dialer,
    Relay,
}

#[derive(Clone, Copy, PartialEq, Debug)]
enum Transport {
    Tcp,
    Quic,
}

struct Config {
    mode: Mode,
    transport: Transport,
    listen_ip: IpAddr,
    listen_port: u16,
    relay_addr: Option<Multiaddr>,
    remote_peer: Option<PeerId>,
    timeout: Duration,
}

impl Config {
    fn from_env() -> Result<Self, String> {
        let mode = match var("MODE").as_deref() {
            Some("listener") => Mode::Listener,
            Some("dialer") => Mode::Dialer,
            Some("relay") => Mode::Relay,
            other => return Err(format!("MODE must be listener, dialer or relay, got {other:?}")),
        };
        let transport = match var("TRANSPORT").as_deref() {
            Some("tcp") => Transport::Tcp,
            Some("quic") => Transport::Quic,
            other => return Err(format!("TRANSPORT must be tcp or quic, got {other:?}")),
        };
        let parse = |name: &str, default: &str| var(name).unwrap_or_else(|| default.to_string());
        let listen_ip = parse("LISTEN_IP", "0.0.0.0").parse().map_err(|e| format!("LISTEN_IP: {e}"))?;
        let listen_port = parse("LISTEN_PORT", "0").parse().map_err(|e| format!("LISTEN_PORT: {e}"))?;
        let timeout: f64 = parse("TIMEOUT_S", "30").parse().map_err(|e| format!("TIMEOUT_S: {e}"))?;
        let relay_addr = var("RELAY_ADDR")
            .map(|a| a.parse::<Multiaddr>().map_err(|e| format!("RELAY_ADDR: {e}")))
            .transpose()?;
        let remote_peer = var("REMOTE_PEER")
            .map(|p| p.parse::<PeerId>().map_err(|e| format!("REMOTE_PEER: {e}")))
            .transpose()?;
        if mode != Mode::Relay && relay_addr.as_ref().and_then(peer_of).is_none() {
            return Err("RELAY_ADDR with a /p2p/<relay id> is required in listener and dialer modes".into());
        }
        if mode == Mode::Dialer && remote_peer.is_none() {
            return Err("REMOTE_PEER is required in dialer mode".into());
        }
        Ok(Config {
            mode,
            transport,
            listen_ip,
            listen_port,
            relay_addr,
            remote_peer,
            timeout: Duration::from_secs_f64(timeout),
        })
    }

    fn listen_addr(&self) -> Multiaddr {
        let base = Multiaddr::from(self.listen_ip);
        match self.transport {
            Transport::Tcp => base.with(Protocol::Tcp(self.listen_port)),
            Transport::Quic => base.with(Protocol::Udp(self.listen_port)).with(Protocol::QuicV1),
        }
    }
}

fn peer_of(addr: &Multiaddr) -> Option<PeerId> {
    addr.iter().filter_map(|p| if let Protocol::P2p(id) = p { Some(id) } else { None }).last()
}

#[derive(NetworkBehaviour)]
struct Behaviour {
    relay_client: relay::client::Behaviour,
    relay: Toggle<relay::Behaviour>,
    dcutr: Toggle<dcutr::Behaviour>,
    identify: identify::Behaviour,
    ping: ping::Behaviour,
}

/// A swarm with only the contract's transport: TCP+Noise+yamux or QUIC, each beside the relay client's
/// circuits (upgraded with Noise and yamux as any other stream-based connection).
fn build_swarm(config: &Config) -> Result<Swarm<Behaviour>, Box<dyn std::error::Error>> {
    let keypair = keypair_from_env()?;
    let relay_mode = config.mode == Mode::Relay;
    let behaviour = move |key: &libp2p::identity::Keypair, relay_client: relay::client::Behaviour| {
        let peer_id = key.public().to_peer_id();
        Behaviour {
            relay_client,
            // the implementation's default limits, as the contract asks of a relay
            relay: Toggle::from(relay_mode.then(|| relay::Behaviour::new(peer_id, Default::default()))),
            dcutr: Toggle::from((!relay_mode).then(|| dcutr::Behaviour::new(peer_id))),
            identify: identify::Behaviour::new(identify::Config::new("/ipfs/0.1.0".into(), key.public())),
            // one ping a second, the first as soon as a connection opens: the dialer's proof of the direct path
            ping: ping::Behaviour::new(ping::Config::new().with_interval(Duration::from_secs(1))),
        }
    };
    // A connection with nothing to do would close after the default 0 s of idleness; the harness decides
    // when the peers stop.
    let swarm_config =
        |c: libp2p::swarm::Config| c.with_idle_connection_timeout(Duration::from_secs(3600));
    let builder = SwarmBuilder::with_existing_identity(keypair).with_tokio();
    Ok(match config.transport {
        Transport::Tcp => builder
            .with_tcp(tcp::Config::default().nodelay(true), noise::Config::new, yamux::Config::default)?
            .with_relay_client(noise::Config::new, yamux::Config::default)?
            .with_behaviour(behaviour)?
            .with_swarm_config(swarm_config)
            .build(),
        Transport::Quic => builder
            .with_quic()
            .with_relay_client(noise::Config::new, yamux::Config::default)?
            .with_behaviour(behaviour)?
            .with_swarm_config(swarm_config)
            .build(),
    })
}

fn is_relayed(endpoint: &ConnectedPoint) -> bool {
    endpoint.is_relayed()
}

fn remote_addr(endpoint: &ConnectedPoint) -> &Multiaddr {
    endpoint.get_remote_address()
}

/// Where a listener or dialer is on its way to the relay.
#[derive(PartialEq, Debug)]
enum Stage {
    /// listen_on issued; gathering the addresses to print
    Listening,
    /// relay dialed; waiting for its identify (our observed address) before using it
    ReachingRelay,
    /// the relay is known; reservation asked (listener) or circuit dialed (dialer)
    Working,
}

struct Peer {
    config: Config,
    swarm: Swarm<Behaviour>,
    relay_peer: Option<PeerId>,
    listen_addrs: Vec<Multiaddr>,
    listening_printed: bool,
    stage: Stage,
    reserved: bool,
    circuit_dialed_at: Option<Instant>,
    relayed_at: Option<Instant>,
    /// direct connections to REMOTE_PEER: when each opened, and its remote address
    direct: HashMap<ConnectionId, (Instant, Multiaddr)>,
    last_error: Option<String>,
}

enum Outcome {
    Exit(ExitCode),
    Continue,
}

impl Peer {
    fn new(config: Config) -> Result<Self, Box<dyn std::error::Error>> {
        let swarm = build_swarm(&config)?;
        let relay_peer = config.relay_addr.as_ref().and_then(peer_of);
        Ok(Peer {
            config,
            swarm,
            relay_peer,
            listen_addrs: vec![],
            listening_printed: false,
            stage: Stage::Listening,
            reserved: false,
            circuit_dialed_at: None,
            relayed_at: None,
            direct: HashMap::new(),
            last_error: None,
        })
    }

    fn note_error(&mut self, error: String) {
        tracing::warn!("{error}");
        self.last_error = Some(error);
    }

    /// Everything has been printed that "listening" promises; a listener or dialer now goes to its relay.
    fn on_listening(&mut self) -> Result<(), Box<dyn std::error::Error>> {
        self.listening_printed = true;
        let addrs: Vec<String> = self.listen_addrs.iter().map(|a| a.to_string()).collect();
        emit(json!({"event": "listening", "peer_id": self.swarm.local_peer_id().to_string(), "addrs": addrs}));
        if self.config.mode == Mode::Relay {
            return Ok(());
        }
        let relay = self.config.relay_addr.clone().expect("checked in Config");
        tracing::info!("dialing the relay at {relay}");
        self.swarm.dial(relay)?;
        self.stage = Stage::ReachingRelay;
        Ok(())
    }

    /// The relay has told us the address it sees us at. DCUtR offers the candidates it has when a relayed
    /// connection opens, so this must come before the circuit: the upstream hole-punch test client waits for
    /// the same event.
    fn on_relay_known(&mut self) -> Result<(), Box<dyn std::error::Error>> {
        if self.stage != Stage::ReachingRelay {
            return Ok(());
        }
        self.stage = Stage::Working;
        let circuit = self.config.relay_addr.clone().expect("checked").with(Protocol::P2pCircuit);
        match self.config.mode {
            Mode::Listener => {
                tracing::info!("asking for a reservation: listening on {circuit}");
                self.swarm.listen_on(circuit)?;
            }
            Mode::Dialer => {
                let target = circuit.with(Protocol::P2p(self.config.remote_peer.expect("checked")));
                tracing::info!("dialing {target}");
                self.circuit_dialed_at = Some(Instant::now());
                self.swarm.dial(target)?;
            }
            Mode::Relay => {}
        }
        Ok(())
    }

    fn handle(&mut self, event: SwarmEvent<BehaviourEvent>) -> Result<Outcome, Box<dyn std::error::Error>> {
        match event {
            SwarmEvent::NewListenAddr { address, .. } => {
                tracing::info!("listening on {address}");
                if self.config.mode == Mode::Relay {
                    // rust-libp2p's relay only advertises the hop protocol once it has a confirmed external
                    // address; the relay sits on the public segment, so its listen addresses are external.
                    self.swarm.add_external_address(address.clone());
                }
                if !address.iter().any(|p| p == Protocol::P2pCircuit) {
                    self.listen_addrs.push(address);
                }
            }
            SwarmEvent::ConnectionEstablished { peer_id, connection_id, endpoint, .. } => {
                let addr = remote_addr(&endpoint).clone();
                tracing::info!(%peer_id, ?connection_id, %addr, relayed = is_relayed(&endpoint), "connection open");
                if Some(peer_id) == self.relay_peer || self.config.mode == Mode::Relay {
                    return Ok(Outcome::Continue);
                }
                if is_relayed(&endpoint) {
                    if self.config.mode == Mode::Dialer && Some(peer_id) == self.config.remote_peer
                        && self.relayed_at.is_none()
                    {
                        let now = Instant::now();
                        let ms = self.circuit_dialed_at.map_or(0, |t| now.duration_since(t).as_millis());
                        self.relayed_at = Some(now);
                        emit(json!({"event": "relayed", "ms": ms as u64}));
                    }
                } else {
                    match self.config.mode {
                        Mode::Listener => emit(json!({
                            "event": "direct", "peer": peer_id.to_string(), "remote_addr": addr.to_string()})),
                        Mode::Dialer if Some(peer_id) == self.config.remote_peer => {
                            self.direct.insert(connection_id, (Instant::now(), addr));
                        }
                        _ => {}
                    }
                }
            }
            SwarmEvent::ConnectionClosed { peer_id, connection_id, endpoint, cause, .. } => {
                tracing::info!(%peer_id, ?connection_id, addr = %remote_addr(&endpoint), ?cause, "connection closed");
                self.direct.remove(&connection_id);
                if Some(peer_id) == self.relay_peer && self.stage == Stage::ReachingRelay {
                    self.note_error(format!("the relay closed the connection before identify: {cause:?}"));
                }
            }
            SwarmEvent::OutgoingConnectionError { peer_id, error, .. } => {
                self.note_error(format!("dial to {peer_id:?} failed: {error}"));
            }
            SwarmEvent::IncomingConnectionError { send_back_addr, error, .. } => {
                self.note_error(format!("incoming connection from {send_back_addr} failed: {error}"));
            }
            SwarmEvent::ListenerClosed { addresses, reason, .. } => {
                self.note_error(format!("listener on {addresses:?} closed: {reason:?}"));
            }
            SwarmEvent::Behaviour(BehaviourEvent::Identify(identify::Event::Received { peer_id, info, .. })) => {
                tracing::info!(%peer_id, agent = %info.agent_version, observed = %info.observed_addr,
                    protocols = ?info.protocols, "identify received");
                // The observed address reaches DCUtR as identify's NewExternalAddrCandidate, queued right
                // behind this event. Not confirming it as an external address is deliberate: the swarm drops
                // candidates that are already confirmed, and DCUtR offers candidates only.
                if Some(peer_id) == self.relay_peer && self.stage == Stage::ReachingRelay {
                    self.on_relay_known()?;
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Identify(identify::Event::Error { peer_id, error, .. })) => {
                self.note_error(format!("identify with {peer_id} failed: {error}"));
                if Some(peer_id) == self.relay_peer && self.stage == Stage::ReachingRelay {
                    self.on_relay_known()?; // without an observed address; DCUtR may still find one later
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::RelayClient(event)) => {
                tracing::info!(?event, "relay client");
                if let relay::client::Event::ReservationReqAccepted { .. } = event {
                    if !self.reserved {
                        self.reserved = true;
                        emit(json!({"event": "reserved"}));
                    }
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Dcutr(dcutr::Event { remote_peer_id, result })) => match result {
                Ok(connection) => tracing::info!(%remote_peer_id, ?connection, "hole punch succeeded"),
                Err(error) => self.note_error(format!("hole punch to {remote_peer_id} failed: {error}")),
            },
            SwarmEvent::Behaviour(BehaviourEvent::Ping(ping::Event { peer, connection, result })) => {
                match (&result, self.direct.get(&connection)) {
                    (Ok(rtt), Some((opened, addr))) if self.config.mode == Mode::Dialer => {
                        let time_to_direct = self.relayed_at.map_or(0, |r| opened.duration_since(r).as_millis());
                        emit(json!({"event": "result", "path": "direct",
                            "time_to_direct_ms": time_to_direct as u64,
                            "rtt_ms": rtt.as_secs_f64() * 1000.0, "remote_addr": addr.to_string()}));
                        return Ok(Outcome::Exit(ExitCode::SUCCESS));
                    }
                    (Err(error), Some(_)) => self.note_error(format!("ping over the direct connection failed: {error}")),
                    _ => tracing::debug!(%peer, ?connection, ?result, "ping"),
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Relay(event)) => tracing::info!(?event, "relay"),
            SwarmEvent::NewExternalAddrCandidate { address } => tracing::info!(%address, "address candidate"),
            SwarmEvent::ExternalAddrConfirmed { address } => tracing::info!(%address, "external address"),
            other => tracing::debug!(?other, "swarm event"),
        }
        Ok(Outcome::Continue)
    }

    /// The deadline passed: the dialer reports how far it got; a listener that never got its reservation
    /// says so on stderr. Either way, exit 1.
    fn on_deadline(&self) -> ExitCode {
        let error = self.last_error.clone().unwrap_or_else(|| "timed out".into());
        match self.config.mode {
            Mode::Dialer => {
                let path = if !self.direct.is_empty() {
                    "direct" // a direct connection without a ping over it: the proof is missing
                } else if self.relayed_at.is_some() {
                    "relayed"
                } else {
                    "none"
                };
                emit(json!({"event": "result", "path": path,
                    "error": format!("no ping over a direct connection within {:?}: {error}", self.config.timeout)}));
            }
            _ => tracing::error!("no reservation within {:?}: {error}", self.config.timeout),
        }
        ExitCode::from(1)
    }

    /// Closes every connection before the process ends. A QUIC connection dropped with the process sends no
    /// CONNECTION_CLOSE (quinn's endpoint task dies with the runtime), so a relay would hold our reservation
    /// until its idle timeout: the NAT lab's peers share one router address, and our relay allows 8
    /// reservations per address. TCP needs none of this (the kernel sends the FIN), but it costs nothing.
    async fn close_all(&mut self) {
        let peers: Vec<PeerId> = self.swarm.connected_peers().cloned().collect();
        for peer in peers {
            let _ = self.swarm.disconnect_peer_id(peer);
        }
        let closing = async {
            while self.swarm.connected_peers().next().is_some() {
                let event = self.swarm.select_next_some().await;
                tracing::debug!(?event, "closing");
            }
            // let the QUIC endpoint task put the CONNECTION_CLOSE frames on the wire
            tokio::time::sleep(CLOSE_FLUSH).await;
        };
        if tokio::time::timeout(CLOSE_WAIT, closing).await.is_err() {
            tracing::warn!("connections still open after {CLOSE_WAIT:?}; exiting anyway");
        }
    }

    async fn run(mut self) -> Result<ExitCode, Box<dyn std::error::Error>> {
        let code = self.serve().await?;
        self.close_all().await;
        Ok(code)
    }

    async fn serve(&mut self) -> Result<ExitCode, Box<dyn std::error::Error>> {
        self.swarm.listen_on(self.config.listen_addr())?;
        let mut sigterm = signal(SignalKind::terminate())?;
        let mut sigint = signal(SignalKind::interrupt())?;
        let deadline = tokio::time::sleep(self.config.timeout);
        tokio::pin!(deadline);
        let gather = tokio::time::sleep(Duration::from_secs(86400));
        tokio::pin!(gather);
        let mut gathering = false;
        loop {
            tokio::select! {
                event = self.swarm.select_next_some() => {
                    let first_addr = matches!(event, SwarmEvent::NewListenAddr { .. }) && !gathering;
                    if let Outcome::Exit(code) = self.handle(event)? {
                        return Ok(code);
                    }
                    if first_addr && !self.listen_addrs.is_empty() {
                        gathering = true;
                        gather.as_mut().reset(tokio::time::Instant::now() + LISTEN_GATHER);
                    }
                }
                _ = &mut gather, if gathering && !self.listening_printed => self.on_listening()?,
                _ = &mut deadline, if self.config.mode == Mode::Dialer
                    || (self.config.mode == Mode::Listener && !self.reserved) => return Ok(self.on_deadline()),
                _ = sigterm.recv() => return Ok(ExitCode::SUCCESS),
                _ = sigint.recv() => return Ok(ExitCode::SUCCESS),
            }
        }
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    init_logs();
    let result = async {
        let config = Config::from_env()?;
        tracing::info!(mode = ?config.mode, transport = ?config.transport, "starting");
        Peer::new(config)?.run().await
    };
    match result.await {
        Ok(code) => code,
        Err(error) => {
            tracing::error!("{error}");
            eprintln!("error: {error}");
            ExitCode::from(2)
        }
    }
}
