//! A rust-libp2p rendezvous client against a `/rendezvous/1.0.0` server (issue 15): it registers, discovers,
//! discovers again with the cookie it was given, unregisters, and checks it is gone, printing a JSON line at
//! each step.
//!
//!   RENDEZVOUS_ADDR  multiaddr of the server, ending in /p2p/<server id>
//!   NAMESPACE        the namespace to register in and discover
//!   CLIENT           behaviour (default): rust-libp2p's own `rendezvous::client::Behaviour`, unchanged;
//!                    standard: the same steps over request_response with standard peer records
//!                    (src/rendezvous_wire.rs says why both exist)
//!   TTL              seconds asked for the registration, default 7200 (rust-libp2p's MIN_TTL)
//!   SEED             64 hex chars, the Ed25519 seed of the identity (a fresh one if unset)
//!   TIMEOUT_S        overall deadline, default 30
//!   DISCOVER_ONLY    1: skip registering; discover once, print it and stop
//!
//! Between the first discovery and the one with the cookie it reads one line from stdin (end of file counts),
//! so a test can register someone new in between and expect exactly that one back.
use std::{collections::HashMap, process::ExitCode, time::Duration};

use futures::{channel::oneshot, StreamExt};
use libp2p::{
    core::{PeerRecord, SignedEnvelope},
    identify,
    identity::Keypair,
    multiaddr::Protocol,
    noise, rendezvous,
    request_response::{self, OutboundRequestId, ProtocolSupport},
    swarm::{behaviour::toggle::Toggle, NetworkBehaviour, SwarmEvent},
    tcp, yamux, Multiaddr, PeerId, Swarm, SwarmBuilder,
};
use serde_json::{json, Value};

use holepunch_interop::{
    emit, init_logs, keypair_from_env,
    rendezvous_wire::{self, Request, Response},
    var,
};

/// How often the client looks for its own registration to be gone after unregistering: the protocol has no
/// answer to an unregister.
const GONE_POLL: Duration = Duration::from_millis(200);

#[derive(NetworkBehaviour)]
struct Behaviour {
    stock: Toggle<rendezvous::client::Behaviour>,
    standard: Toggle<request_response::Behaviour<rendezvous_wire::Codec>>,
    identify: identify::Behaviour,
}

#[derive(Clone, Copy, PartialEq, Debug)]
enum Kind {
    Behaviour,
    Standard,
}

/// What a request came to, whichever client made it.
enum Answer {
    Registered { ttl: u64 },
    Discovered { peers: Vec<(PeerId, Value)>, cookie: Vec<u8> },
    Failed { op: &'static str, error: String },
}

struct Client {
    kind: Kind,
    server: PeerId,
    namespace: String,
    keypair: Keypair,
    /// the standard client's requests in flight, by what they asked
    pending: HashMap<OutboundRequestId, &'static str>,
}

fn describe(record: &PeerRecord, ns: &str, ttl: u64) -> (PeerId, Value) {
    let addrs: Vec<String> = record.addresses().iter().map(|a| a.to_string()).collect();
    (record.peer_id(), json!({"peer_id": record.peer_id().to_string(), "addrs": addrs, "ttl": ttl, "namespace": ns}))
}

impl Client {
    fn register(&mut self, swarm: &mut Swarm<Behaviour>, ttl: u64) -> Result<(), Box<dyn std::error::Error>> {
        let ns = rendezvous::Namespace::new(self.namespace.clone())?;
        match self.kind {
            Kind::Behaviour => {
                swarm.behaviour_mut().stock.as_mut().expect("on").register(ns, self.server, Some(ttl))?
            }
            Kind::Standard => {
                let addrs: Vec<Multiaddr> = swarm.external_addresses().cloned().collect();
                let record = PeerRecord::new_interop(&self.keypair, addrs)?;
                let request = Request::Register {
                    ns: self.namespace.clone(),
                    signed_peer_record: record.into_signed_envelope().into_protobuf_encoding(),
                    ttl,
                };
                let id = swarm.behaviour_mut().standard.as_mut().expect("on").send_request(&self.server, request);
                self.pending.insert(id, "register");
            }
        }
        Ok(())
    }

    fn discover(&mut self, swarm: &mut Swarm<Behaviour>, cookie: Option<Vec<u8>>) -> Result<(), Box<dyn std::error::Error>> {
        match self.kind {
            Kind::Behaviour => {
                let cookie = cookie.map(rendezvous::Cookie::from_wire_encoding).transpose()?;
                let ns = rendezvous::Namespace::new(self.namespace.clone())?;
                swarm.behaviour_mut().stock.as_mut().expect("on").discover(Some(ns), cookie, None, self.server);
            }
            Kind::Standard => {
                let request = Request::Discover { ns: self.namespace.clone(), cookie: cookie.unwrap_or_default(), limit: 0 };
                let id = swarm.behaviour_mut().standard.as_mut().expect("on").send_request(&self.server, request);
                self.pending.insert(id, "discover");
            }
        }
        Ok(())
    }

    fn unregister(&mut self, swarm: &mut Swarm<Behaviour>) -> Result<(), Box<dyn std::error::Error>> {
        match self.kind {
            Kind::Behaviour => {
                let ns = rendezvous::Namespace::new(self.namespace.clone())?;
                swarm.behaviour_mut().stock.as_mut().expect("on").unregister(ns, self.server);
            }
            Kind::Standard => {
                let request = Request::Unregister { ns: self.namespace.clone() };
                let id = swarm.behaviour_mut().standard.as_mut().expect("on").send_request(&self.server, request);
                self.pending.insert(id, "unregister");
            }
        }
        Ok(())
    }

    fn answer(&mut self, event: BehaviourEvent) -> Option<Answer> {
        use rendezvous::client::Event as Stock;
        match event {
            BehaviourEvent::Stock(Stock::Registered { ttl, .. }) => Some(Answer::Registered { ttl }),
            BehaviourEvent::Stock(Stock::RegisterFailed { error, .. }) => {
                Some(Answer::Failed { op: "register", error: format!("{error:?}") })
            }
            BehaviourEvent::Stock(Stock::DiscoverFailed { error, .. }) => {
                Some(Answer::Failed { op: "discover", error: format!("{error:?}") })
            }
            BehaviourEvent::Stock(Stock::Discovered { registrations, cookie, .. }) => Some(Answer::Discovered {
                peers: registrations.iter().map(|r| describe(&r.record, &r.namespace.to_string(), r.ttl)).collect(),
                cookie: cookie.into_wire_encoding(),
            }),
            BehaviourEvent::Standard(request_response::Event::Message {
                message: request_response::Message::Response { request_id, response },
                ..
            }) => {
                let op = self.pending.remove(&request_id).unwrap_or("?");
                match response {
                    Response::Register { status: 0, ttl, .. } => Some(Answer::Registered { ttl }),
                    Response::Register { status, text, .. } | Response::Discover { status, text, .. }
                        if status != 0 =>
                    {
                        Some(Answer::Failed { op, error: format!("status {status}: {text}") })
                    }
                    Response::Discover { registrations, cookie, .. } => {
                        let mut peers = vec![];
                        for r in registrations {
                            let record = SignedEnvelope::from_protobuf_encoding(&r.signed_peer_record)
                                .map_err(|e| e.to_string())
                                .and_then(|e| PeerRecord::from_signed_envelope_interop(e).map_err(|e| e.to_string()));
                            match record {
                                Ok(record) => peers.push(describe(&record, &r.ns, r.ttl)),
                                Err(error) => {
                                    return Some(Answer::Failed { op, error: format!("a record does not verify: {error}") })
                                }
                            }
                        }
                        Some(Answer::Discovered { peers, cookie })
                    }
                    Response::Nothing if op == "unregister" => None,
                    other => Some(Answer::Failed { op, error: format!("unexpected answer {other:?}") }),
                }
            }
            BehaviourEvent::Standard(request_response::Event::OutboundFailure { request_id, error, .. }) => {
                match self.pending.remove(&request_id).unwrap_or("?") {
                    "unregister" => {
                        tracing::info!(%error, "the unregister's stream ended");
                        None
                    }
                    op => Some(Answer::Failed { op, error: error.to_string() }),
                }
            }
            other => {
                tracing::debug!(?other, "behaviour event");
                None
            }
        }
    }
}

#[derive(PartialEq, Debug)]
enum Step {
    Connecting,
    Registering,
    FirstDiscover,
    WaitingForStdin,
    CookieDiscover,
    CheckingGone,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A line on stdin (or its end), read on a thread of its own since the runtime has no stdin support here.
fn stdin_line() -> oneshot::Receiver<()> {
    let (tx, rx) = oneshot::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = std::io::stdin().read_line(&mut line);
        let _ = tx.send(());
    });
    rx
}

fn fail(op: &str, error: impl std::fmt::Display) -> ExitCode {
    emit(json!({"event": "error", "op": op, "error": error.to_string()}));
    ExitCode::from(1)
}

async fn run() -> Result<ExitCode, Box<dyn std::error::Error>> {
    let server_addr: Multiaddr = var("RENDEZVOUS_ADDR").ok_or("RENDEZVOUS_ADDR is required")?.parse()?;
    let server = server_addr
        .iter()
        .filter_map(|p| if let Protocol::P2p(id) = p { Some(id) } else { None })
        .last()
        .ok_or("RENDEZVOUS_ADDR must end in /p2p/<server peer id>")?;
    let namespace = var("NAMESPACE").ok_or("NAMESPACE is required")?;
    let kind = match var("CLIENT").as_deref() {
        None | Some("behaviour") => Kind::Behaviour,
        Some("standard") => Kind::Standard,
        Some(other) => return Err(format!("CLIENT must be behaviour or standard, got {other}").into()),
    };
    let ttl: u64 = var("TTL").unwrap_or_else(|| rendezvous::MIN_TTL.to_string()).parse()?;
    let timeout: f64 = var("TIMEOUT_S").unwrap_or_else(|| "30".into()).parse()?;
    let discover_only = var("DISCOVER_ONLY").as_deref() == Some("1");
    let keypair = keypair_from_env()?;

    let mut swarm: Swarm<Behaviour> = SwarmBuilder::with_existing_identity(keypair.clone())
        .with_tokio()
        .with_tcp(tcp::Config::default().nodelay(true), noise::Config::new, yamux::Config::default)?
        .with_behaviour(|key| Behaviour {
            stock: Toggle::from((kind == Kind::Behaviour).then(|| rendezvous::client::Behaviour::new(key.clone()))),
            standard: Toggle::from((kind == Kind::Standard).then(|| {
                request_response::Behaviour::new(
                    [(rendezvous_wire::PROTOCOL, ProtocolSupport::Outbound)],
                    request_response::Config::default(),
                )
            })),
            identify: identify::Behaviour::new(identify::Config::new("/ipfs/0.1.0".into(), key.public())),
        })?
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(60)))
        .build();
    let me: PeerId = *swarm.local_peer_id();
    let mut client = Client { kind, server, namespace: namespace.clone(), keypair, pending: HashMap::new() };
    // Both clients register a signed peer record of our external addresses (rust-libp2p's refuses to register
    // without one): a loopback listener stands in for the address a real peer would have learned.
    swarm.listen_on("/ip4/127.0.0.1/tcp/0".parse()?)?;

    let mut step = Step::Connecting;
    let mut cookie: Option<Vec<u8>> = None;
    let mut stdin: Option<oneshot::Receiver<()>> = None;
    let mut dialed = false;
    let deadline = tokio::time::sleep(Duration::from_secs_f64(timeout));
    tokio::pin!(deadline);
    let poll = tokio::time::sleep(Duration::from_secs(86400));
    tokio::pin!(poll);
    loop {
        tokio::select! {
            event = swarm.select_next_some() => match event {
                SwarmEvent::NewListenAddr { address, .. } => {
                    swarm.add_external_address(address.clone());
                    if !dialed {
                        dialed = true;
                        emit(json!({"event": "listening", "peer_id": me.to_string(), "addrs": [address.to_string()],
                                    "client": format!("{kind:?}").to_lowercase()}));
                        swarm.dial(server_addr.clone())?;
                    }
                }
                SwarmEvent::ConnectionEstablished { peer_id, .. } if peer_id == server && step == Step::Connecting => {
                    if discover_only {
                        step = Step::FirstDiscover;
                        client.discover(&mut swarm, None)?;
                    } else {
                        step = Step::Registering;
                        client.register(&mut swarm, ttl)?;
                    }
                }
                SwarmEvent::OutgoingConnectionError { error, .. } => return Ok(fail("connect", error)),
                SwarmEvent::Behaviour(event) => match client.answer(event) {
                    None => {}
                    Some(Answer::Failed { op, error }) => return Ok(fail(op, error)),
                    Some(Answer::Registered { ttl }) => {
                        emit(json!({"event": "registered", "namespace": namespace, "ttl": ttl}));
                        step = Step::FirstDiscover;
                        client.discover(&mut swarm, None)?;
                    }
                    Some(Answer::Discovered { peers, cookie: given }) => {
                        let ids: Vec<PeerId> = peers.iter().map(|(id, _)| *id).collect();
                        let seen: Vec<Value> = peers.into_iter().map(|(_, v)| v).collect();
                        match step {
                            Step::FirstDiscover => {
                                emit(json!({"event": "discovered", "round": "first", "peers": seen, "cookie": hex(&given)}));
                                if discover_only {
                                    return Ok(ExitCode::SUCCESS);
                                }
                                cookie = Some(given);
                                step = Step::WaitingForStdin;
                                stdin = Some(stdin_line());
                            }
                            Step::CookieDiscover => {
                                emit(json!({"event": "discovered", "round": "cookie", "peers": seen, "cookie": hex(&given)}));
                                client.unregister(&mut swarm)?;
                                emit(json!({"event": "unregistered", "namespace": namespace}));
                                step = Step::CheckingGone;
                                poll.as_mut().reset(tokio::time::Instant::now() + GONE_POLL);
                            }
                            Step::CheckingGone => {
                                if !ids.contains(&me) {
                                    emit(json!({"event": "discovered", "round": "after_unregister", "peers": seen}));
                                    return Ok(ExitCode::SUCCESS);
                                }
                                poll.as_mut().reset(tokio::time::Instant::now() + GONE_POLL);
                            }
                            _ => tracing::warn!(?step, "discovery answer out of turn"),
                        }
                    }
                },
                other => tracing::debug!(?other, "swarm event"),
            },
            _ = async { stdin.as_mut().expect("guarded").await }, if stdin.is_some() => {
                stdin = None;
                step = Step::CookieDiscover;
                client.discover(&mut swarm, cookie.clone())?;
            }
            _ = &mut poll, if step == Step::CheckingGone => {
                poll.as_mut().reset(tokio::time::Instant::now() + Duration::from_secs(86400));
                client.discover(&mut swarm, None)?;
            }
            _ = &mut deadline => return Ok(fail(&format!("{step:?}"), "timed out")),
        }
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    init_logs();
    match run().await {
        Ok(code) => code,
        Err(error) => fail("start", error),
    }
}
