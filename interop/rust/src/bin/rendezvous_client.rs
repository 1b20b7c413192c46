//! rust-libp2p's own rendezvous client against a `/rendezvous/1.0.0` server (issue 15): it registers, discovers,
//! discovers again with the cookie it was given, unregisters, and checks it is gone, printing a JSON line at
//! each step.
//!
//!   RENDEZVOUS_ADDR  multiaddr of the server, ending in /p2p/<server id>
//!   NAMESPACE        the namespace to register in and discover
//!   TTL              seconds asked for the registration, default 120
//!   SEED             64 hex chars, the Ed25519 seed of the identity (a fresh one if unset)
//!   TIMEOUT_S        overall deadline, default 30
//!
//! Between the first discovery and the one with the cookie it reads one line from stdin (end of file counts),
//! so a test can register someone new in between and expect exactly that one back.
use std::{process::ExitCode, time::Duration};

use futures::{channel::oneshot, StreamExt};
use libp2p::{
    identify, multiaddr::Protocol, noise, rendezvous,
    swarm::{NetworkBehaviour, SwarmEvent},
    tcp, yamux, Multiaddr, PeerId, Swarm, SwarmBuilder,
};
use serde_json::{json, Value};

use holepunch_interop::{emit, init_logs, keypair_from_env, var};

/// How often the client looks for its own registration to be gone after unregistering: the protocol has no
/// answer to an unregister.
const GONE_POLL: Duration = Duration::from_millis(200);

#[derive(NetworkBehaviour)]
struct Behaviour {
    rendezvous: rendezvous::client::Behaviour,
    identify: identify::Behaviour,
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

fn peers(registrations: &[rendezvous::Registration]) -> Vec<Value> {
    registrations
        .iter()
        .map(|r| {
            let addrs: Vec<String> = r.record.addresses().iter().map(|a| a.to_string()).collect();
            json!({"peer_id": r.record.peer_id().to_string(), "addrs": addrs, "ttl": r.ttl,
                   "namespace": r.namespace.to_string()})
        })
        .collect()
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
    let namespace = rendezvous::Namespace::new(var("NAMESPACE").ok_or("NAMESPACE is required")?)?;
    let ttl: u64 = var("TTL").unwrap_or_else(|| "120".into()).parse()?;
    let timeout: f64 = var("TIMEOUT_S").unwrap_or_else(|| "30".into()).parse()?;

    let mut swarm: Swarm<Behaviour> = SwarmBuilder::with_existing_identity(keypair_from_env()?)
        .with_tokio()
        .with_tcp(tcp::Config::default().nodelay(true), noise::Config::new, yamux::Config::default)?
        .with_behaviour(|key| Behaviour {
            rendezvous: rendezvous::client::Behaviour::new(key.clone()),
            identify: identify::Behaviour::new(identify::Config::new("/ipfs/0.1.0".into(), key.public())),
        })?
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(60)))
        .build();
    let me: PeerId = *swarm.local_peer_id();
    // rust-libp2p registers a signed peer record of our external addresses and refuses to register without one:
    // a loopback listener stands in for the address a real peer would have learned.
    swarm.listen_on("/ip4/127.0.0.1/tcp/0".parse()?)?;

    let mut step = Step::Connecting;
    let mut cookie: Option<rendezvous::Cookie> = None;
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
                        emit(json!({"event": "listening", "peer_id": me.to_string(), "addrs": [address.to_string()]}));
                        swarm.dial(server_addr.clone())?;
                    }
                }
                SwarmEvent::ConnectionEstablished { peer_id, .. } if peer_id == server && step == Step::Connecting => {
                    step = Step::Registering;
                    swarm.behaviour_mut().rendezvous.register(namespace.clone(), server, Some(ttl))?;
                }
                SwarmEvent::OutgoingConnectionError { error, .. } => return Ok(fail("connect", error)),
                SwarmEvent::Behaviour(BehaviourEvent::Rendezvous(event)) => match event {
                    rendezvous::client::Event::Registered { ttl, namespace, .. } => {
                        emit(json!({"event": "registered", "namespace": namespace.to_string(), "ttl": ttl}));
                        step = Step::FirstDiscover;
                        swarm.behaviour_mut().rendezvous.discover(Some(namespace), None, None, server);
                    }
                    rendezvous::client::Event::RegisterFailed { error, .. } => {
                        return Ok(fail("register", format!("{error:?}")))
                    }
                    rendezvous::client::Event::DiscoverFailed { error, .. } => {
                        return Ok(fail("discover", format!("{error:?}")))
                    }
                    rendezvous::client::Event::Discovered { registrations, cookie: given, .. } => {
                        let seen = peers(&registrations);
                        let wire = hex(&given.clone().into_wire_encoding());
                        match step {
                            Step::FirstDiscover => {
                                emit(json!({"event": "discovered", "round": "first", "peers": seen, "cookie": wire}));
                                cookie = Some(given);
                                step = Step::WaitingForStdin;
                                stdin = Some(stdin_line());
                            }
                            Step::CookieDiscover => {
                                emit(json!({"event": "discovered", "round": "cookie", "peers": seen, "cookie": wire}));
                                swarm.behaviour_mut().rendezvous.unregister(namespace.clone(), server);
                                emit(json!({"event": "unregistered", "namespace": namespace.to_string()}));
                                step = Step::CheckingGone;
                                poll.as_mut().reset(tokio::time::Instant::now() + GONE_POLL);
                            }
                            Step::CheckingGone => {
                                if registrations.iter().all(|r| r.record.peer_id() != me) {
                                    emit(json!({"event": "discovered", "round": "after_unregister", "peers": seen}));
                                    return Ok(ExitCode::SUCCESS);
                                }
                                poll.as_mut().reset(tokio::time::Instant::now() + GONE_POLL);
                            }
                            _ => tracing::warn!(?step, "discovery answer out of turn"),
                        }
                    }
                    other => tracing::info!(?other, "rendezvous"),
                },
                other => tracing::debug!(?other, "swarm event"),
            },
            _ = async { stdin.as_mut().expect("guarded").await }, if stdin.is_some() => {
                stdin = None;
                step = Step::CookieDiscover;
                swarm.behaviour_mut().rendezvous.discover(Some(namespace.clone()), cookie.clone(), None, server);
            }
            _ = &mut poll, if step == Step::CheckingGone => {
                poll.as_mut().reset(tokio::time::Instant::now() + Duration::from_secs(86400));
                swarm.behaviour_mut().rendezvous.discover(Some(namespace.clone()), None, None, server);
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
