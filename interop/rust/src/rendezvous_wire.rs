//! `/rendezvous/1.0.0` as the spec's protobuf writes it, with peer records in the standard signed-envelope
//! format (domain "libp2p-peer-record", payload type 0x0301) that go-libp2p, js-libp2p and our service use.
//!
//! Why this exists beside `libp2p::rendezvous::client::Behaviour`: rust-libp2p 0.57's rendezvous (0.18) signs
//! its registrations with `PeerRecord::new` and reads discovered ones with `PeerRecord::from_signed_envelope`,
//! both rust-libp2p's legacy format (domain "libp2p-routing-state", payload type "/libp2p/routing-state-record").
//! No other implementation verifies those, and one standard record in a discover answer fails its whole
//! answer. libp2p-core offers the standard format as `PeerRecord::new_interop` and
//! `from_signed_envelope_interop`; this codec drives request_response with them.
use std::io;

use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use libp2p::{request_response, StreamProtocol};

pub const PROTOCOL: StreamProtocol = StreamProtocol::new("/rendezvous/1.0.0");
const MAX_MESSAGE: u64 = 1 << 20;

// Message.MessageType
const REGISTER: u64 = 0;
const REGISTER_RESPONSE: u64 = 1;
const UNREGISTER: u64 = 2;
const DISCOVER: u64 = 3;
const DISCOVER_RESPONSE: u64 = 4;

#[derive(Debug)]
pub enum Request {
    Register { ns: String, signed_peer_record: Vec<u8>, ttl: u64 },
    Unregister { ns: String },
    Discover { ns: String, cookie: Vec<u8>, limit: u64 },
}

#[derive(Debug)]
pub struct Registered {
    pub ns: String,
    pub signed_peer_record: Vec<u8>,
    pub ttl: u64,
}

#[derive(Debug)]
pub enum Response {
    Register { status: u64, text: String, ttl: u64 },
    Discover { status: u64, text: String, registrations: Vec<Registered>, cookie: Vec<u8> },
    /// The stream ended with no answer, which is what the spec gives an unregister.
    Nothing,
}

fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push(value as u8 | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

fn put_uint(out: &mut Vec<u8>, field: u64, value: u64) {
    put_varint(out, field << 3);
    put_varint(out, value);
}

fn put_bytes(out: &mut Vec<u8>, field: u64, bytes: &[u8]) {
    put_varint(out, field << 3 | 2);
    put_varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

fn bad(what: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.into())
}

fn get_varint(data: &mut &[u8]) -> io::Result<u64> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let (&byte, rest) = data.split_first().ok_or_else(|| bad("truncated varint"))?;
        *data = rest;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Ok(value);
        }
    }
    Err(bad("varint too long"))
}

enum Value<'a> {
    Uint(u64),
    Bytes(&'a [u8]),
}

/// The fields of one protobuf message, in order; fixed-width fields (none in this protocol) are skipped.
fn fields(mut data: &[u8]) -> io::Result<Vec<(u64, Value<'_>)>> {
    let mut out = vec![];
    while !data.is_empty() {
        let key = get_varint(&mut data)?;
        match key & 7 {
            0 => out.push((key >> 3, Value::Uint(get_varint(&mut data)?))),
            2 => {
                let len = get_varint(&mut data)? as usize;
                if len > data.len() {
                    return Err(bad("truncated field"));
                }
                let (bytes, rest) = data.split_at(len);
                data = rest;
                out.push((key >> 3, Value::Bytes(bytes)));
            }
            1 | 5 => {
                let width = if key & 7 == 1 { 8 } else { 4 };
                data = data.get(width..).ok_or_else(|| bad("truncated field"))?;
            }
            wire => return Err(bad(format!("wire type {wire}"))),
        }
    }
    Ok(out)
}

fn uint(fields: &[(u64, Value)], number: u64) -> u64 {
    fields.iter().rev().find_map(|(n, v)| match v {
        Value::Uint(x) if *n == number => Some(*x),
        _ => None,
    }).unwrap_or(0)
}

fn bytes<'a>(fields: &[(u64, Value<'a>)], number: u64) -> &'a [u8] {
    fields.iter().rev().find_map(|(n, v)| match v {
        Value::Bytes(b) if *n == number => Some(*b),
        _ => None,
    }).unwrap_or(&[])
}

fn text(fields: &[(u64, Value)], number: u64) -> String {
    String::from_utf8_lossy(bytes(fields, number)).into_owned()
}

impl Request {
    pub fn encode(&self) -> Vec<u8> {
        let mut inner = vec![];
        let (kind, field) = match self {
            Request::Register { ns, signed_peer_record, ttl } => {
                put_bytes(&mut inner, 1, ns.as_bytes());
                put_bytes(&mut inner, 2, signed_peer_record);
                put_uint(&mut inner, 3, *ttl);
                (REGISTER, 2)
            }
            Request::Unregister { ns } => {
                put_bytes(&mut inner, 1, ns.as_bytes());
                (UNREGISTER, 4)
            }
            Request::Discover { ns, cookie, limit } => {
                put_bytes(&mut inner, 1, ns.as_bytes());
                if *limit > 0 {
                    put_uint(&mut inner, 2, *limit);
                }
                if !cookie.is_empty() {
                    put_bytes(&mut inner, 3, cookie);
                }
                (DISCOVER, 5)
            }
        };
        let mut message = vec![];
        put_uint(&mut message, 1, kind);
        put_bytes(&mut message, field, &inner);
        message
    }
}

impl Response {
    pub fn decode(data: &[u8]) -> io::Result<Self> {
        let message = fields(data)?;
        match uint(&message, 1) {
            REGISTER_RESPONSE => {
                let inner = fields(bytes(&message, 3))?;
                Ok(Response::Register { status: uint(&inner, 1), text: text(&inner, 2), ttl: uint(&inner, 3) })
            }
            DISCOVER_RESPONSE => {
                let inner = fields(bytes(&message, 6))?;
                let registrations = inner
                    .iter()
                    .filter_map(|(n, v)| match v {
                        Value::Bytes(b) if *n == 1 => Some(*b),
                        _ => None,
                    })
                    .map(|entry| {
                        let entry = fields(entry)?;
                        Ok(Registered {
                            ns: text(&entry, 1),
                            signed_peer_record: bytes(&entry, 2).to_vec(),
                            ttl: uint(&entry, 3),
                        })
                    })
                    .collect::<io::Result<Vec<_>>>()?;
                Ok(Response::Discover {
                    status: uint(&inner, 3),
                    text: text(&inner, 4),
                    registrations,
                    cookie: bytes(&inner, 2).to_vec(),
                })
            }
            other => Err(bad(format!("a client expects no message of type {other}"))),
        }
    }
}

/// A length-prefixed message, or None when the stream ends before one starts.
async fn read_frame<T: AsyncRead + Unpin + Send>(io: &mut T) -> io::Result<Option<Vec<u8>>> {
    let mut len = 0u64;
    for shift in (0..64).step_by(7) {
        let mut byte = [0u8];
        if io.read(&mut byte).await? == 0 {
            return if shift == 0 { Ok(None) } else { Err(bad("stream ended inside a length")) };
        }
        len |= u64::from(byte[0] & 0x7f) << shift;
        if byte[0] & 0x80 == 0 {
            break;
        }
    }
    if len > MAX_MESSAGE {
        return Err(bad(format!("a {len}-byte message is over the {MAX_MESSAGE}-byte limit")));
    }
    let mut message = vec![0u8; len as usize];
    io.read_exact(&mut message).await?;
    Ok(Some(message))
}

/// request_response's codec for a rendezvous client: it writes requests and reads answers, never serves.
#[derive(Clone, Default)]
pub struct Codec;

impl request_response::Codec for Codec {
    type Protocol = StreamProtocol;
    type Request = Request;
    type Response = Response;

    async fn read_request<T>(&mut self, _: &StreamProtocol, _: &mut T) -> io::Result<Request>
    where
        T: AsyncRead + Unpin + Send,
    {
        Err(io::Error::new(io::ErrorKind::Unsupported, "a rendezvous client serves no requests"))
    }

    async fn read_response<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Response>
    where
        T: AsyncRead + Unpin + Send,
    {
        match read_frame(io).await? {
            None => Ok(Response::Nothing),
            Some(message) => Response::decode(&message),
        }
    }

    async fn write_request<T>(&mut self, _: &StreamProtocol, io: &mut T, request: Request) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        let message = request.encode();
        let mut frame = vec![];
        put_varint(&mut frame, message.len() as u64);
        frame.extend_from_slice(&message);
        io.write_all(&frame).await
    }

    async fn write_response<T>(&mut self, _: &StreamProtocol, _: &mut T, _: Response) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        Err(io::Error::new(io::ErrorKind::Unsupported, "a rendezvous client serves no requests"))
    }
}
