//! What the interop peer and the rendezvous client share: JSON lines on stdout, logs on stderr, the identity
//! from SEED and the env variables of the interop contract.
use std::io::Write;

use libp2p::identity::Keypair;

/// One JSON object per line on stdout, flushed at once: the harness reads events as they happen.
pub fn emit(event: serde_json::Value) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{event}");
    let _ = out.flush();
}

/// Logs go to stderr only (stdout is the harness's JSON channel); RUST_LOG overrides the level.
pub fn init_logs() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
}

/// An environment variable, treating an empty value as unset.
pub fn var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// The Ed25519 identity whose 32-byte private seed is SEED (64 hex chars), so the harness knows the peer ID in
/// advance; a fresh one when SEED is unset.
pub fn keypair_from_env() -> Result<Keypair, String> {
    let Some(seed) = var("SEED") else {
        return Ok(Keypair::generate_ed25519());
    };
    let seed = seed.trim();
    if seed.len() != 64 || !seed.is_ascii() {
        return Err(format!("SEED must be 64 hex characters, got {} characters", seed.len()));
    }
    let mut bytes = [0u8; 32];
    for (i, byte) in bytes.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&seed[2 * i..2 * i + 2], 16).map_err(|e| format!("SEED is not hex: {e}"))?;
    }
    Keypair::ed25519_from_bytes(bytes).map_err(|e| format!("SEED is not an Ed25519 seed: {e}"))
}

pub mod rendezvous_wire;
