//! The one place messages become bytes and back.
//!
//! A frame is `[len: u32 LE][version: u16 LE][bincode body]`, where `len` counts the version
//! and the body. Decoding checks the length against a hard limit before allocating, checks
//! the protocol version, bounds bincode's own allocations by the same limit, and rejects
//! trailing bytes: garbage gives an error, never a panic or an unbounded allocation.
//! Bulk data (shard bytes) does not go through here: it follows a frame as raw bytes whose
//! length the frame announced.

use bincode::Options;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Bumped on any incompatible change to a message (bincode knows no field names: a new
/// field or a variant anywhere but at the end of an enum is one).
pub const PROTOCOL_VERSION: u16 = 10;
/// Largest encoded message (version and body) accepted or produced.
pub const MAX_FRAME_BYTES: u32 = 4 << 20;
const HEADER_BYTES: usize = 6;
/// A request frame must arrive whole within this long: a peer that sends nothing, or
/// trickles bytes, is cut off instead of holding a task and a buffer without end.
pub const REQUEST_DEADLINE: std::time::Duration = std::time::Duration::from_secs(10);
/// A frame's buffer grows with the bytes that arrive, from at most this much: a peer
/// announcing a large frame does not get memory for it before sending it.
const FIRST_BUFFER: usize = 64 << 10;

#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("frame of {len} bytes exceeds the limit of {MAX_FRAME_BYTES}")]
    TooLarge { len: u64 },
    #[error("frame too short ({0} bytes) to hold a protocol version")]
    Truncated(u32),
    #[error("peer speaks protocol version {got}, this build speaks {PROTOCOL_VERSION}")]
    Version { got: u16 },
    #[error("malformed message: {0}")]
    Malformed(#[from] bincode::Error),
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("request not received whole within {0:?}")]
    Stalled(std::time::Duration),
}

fn options() -> impl Options {
    bincode::DefaultOptions::new()
        .with_limit(MAX_FRAME_BYTES as u64)
        .reject_trailing_bytes()
}

/// Encodes one message as a complete frame.
pub fn encode<T: Serialize>(msg: &T) -> Result<Vec<u8>, CodecError> {
    let body_len = options().serialized_size(msg)?;
    let len = body_len + 2;
    if len > MAX_FRAME_BYTES as u64 {
        return Err(CodecError::TooLarge { len });
    }
    let mut out = Vec::with_capacity(HEADER_BYTES + body_len as usize);
    out.extend_from_slice(&(len as u32).to_le_bytes());
    out.extend_from_slice(&PROTOCOL_VERSION.to_le_bytes());
    options().serialize_into(&mut out, msg)?;
    Ok(out)
}

/// Decodes a frame's version and body (everything after the length prefix).
pub fn decode_payload<T: DeserializeOwned>(payload: &[u8]) -> Result<T, CodecError> {
    let (version, body) = payload
        .split_first_chunk::<2>()
        .ok_or(CodecError::Truncated(payload.len() as u32))?;
    let got = u16::from_le_bytes(*version);
    if got != PROTOCOL_VERSION {
        return Err(CodecError::Version { got });
    }
    Ok(options().deserialize(body)?)
}

/// Decodes one complete frame held in memory.
pub fn decode<T: DeserializeOwned>(frame: &[u8]) -> Result<T, CodecError> {
    let (len, payload) = frame
        .split_first_chunk::<4>()
        .ok_or(CodecError::Truncated(frame.len() as u32))?;
    let len = u32::from_le_bytes(*len);
    check_len(len)?;
    if payload.len() != len as usize {
        return Err(CodecError::Malformed(Box::new(bincode::ErrorKind::Custom(
            format!("frame announces {len} bytes but holds {}", payload.len()),
        ))));
    }
    decode_payload(payload)
}

fn check_len(len: u32) -> Result<(), CodecError> {
    if len > MAX_FRAME_BYTES {
        return Err(CodecError::TooLarge { len: len as u64 });
    }
    if len < 2 {
        return Err(CodecError::Truncated(len));
    }
    Ok(())
}

pub async fn write_frame<W, T>(w: &mut W, msg: &T) -> Result<(), CodecError>
where
    W: AsyncWrite + Unpin,
    T: Serialize,
{
    w.write_all(&encode(msg)?).await?;
    Ok(())
}

pub async fn read_frame<R, T>(r: &mut R) -> Result<T, CodecError>
where
    R: AsyncRead + Unpin,
    T: DeserializeOwned,
{
    let len = r.read_u32_le().await?;
    check_len(len)?;
    let mut payload = Vec::with_capacity((len as usize).min(FIRST_BUFFER));
    r.take(len as u64).read_to_end(&mut payload).await?;
    if payload.len() != len as usize {
        return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof).into());
    }
    decode_payload(&payload)
}

/// Reads a request frame on a server, within [`REQUEST_DEADLINE`].
pub async fn read_request<R, T>(r: &mut R) -> Result<T, CodecError>
where
    R: AsyncRead + Unpin,
    T: DeserializeOwned,
{
    tokio::time::timeout(REQUEST_DEADLINE, read_frame(r))
        .await
        .unwrap_or(Err(CodecError::Stalled(REQUEST_DEADLINE)))
}

/// Encodes durable state (a state machine snapshot, a log command): same encoding as
/// messages, without the frame and its size limit.
pub fn encode_state<T: Serialize>(value: &T) -> Result<Vec<u8>, CodecError> {
    Ok(bincode::DefaultOptions::new().serialize(value)?)
}

/// Decodes durable state, allocating at most `limit` bytes.
pub fn decode_state<T: DeserializeOwned>(bytes: &[u8], limit: u64) -> Result<T, CodecError> {
    Ok(bincode::DefaultOptions::new()
        .with_limit(limit)
        .reject_trailing_bytes()
        .deserialize(bytes)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::{ShardId, SliceId};
    use crate::layout::SliceLayout;
    use crate::wire::{ChunkRequest, ChunkResponse, ErrorKind, WireError};
    use proptest::prelude::*;

    fn sample_requests() -> Vec<ChunkRequest> {
        let layout = SliceLayout::new("rs:4+2".parse().unwrap(), 12345, 65536).unwrap();
        let shard = ShardId::new(SliceId(42), 5);
        vec![
            ChunkRequest::Ping,
            ChunkRequest::Put {
                shard,
                layout,
                grant: None,
            },
            ChunkRequest::Get {
                shard,
                offset: 7,
                len: 99,
                grant: Some(
                    crate::grant::GrantKey {
                        id: 3,
                        created: 9,
                        secret: [5; 32],
                    }
                    .grant(
                        shard.slice,
                        crate::grant::Access::Write,
                        (4096, vec![Some(crate::ids::ChunkserverId(4)), None]),
                        "client:x",
                        100,
                    ),
                ),
            },
            ChunkRequest::List {
                after: Some(shard),
                limit: 10,
            },
        ]
    }

    #[test]
    fn round_trips() {
        for req in sample_requests() {
            let frame = encode(&req).unwrap();
            assert_eq!(decode::<ChunkRequest>(&frame).unwrap(), req);
        }
        let resp = ChunkResponse::Error(WireError::new(ErrorKind::NotFound, "no such shard"));
        assert_eq!(
            decode::<ChunkResponse>(&encode(&resp).unwrap()).unwrap(),
            resp
        );
    }

    #[tokio::test]
    async fn stream_round_trip_and_oversized_frame() {
        let mut buf = Vec::new();
        for req in sample_requests() {
            write_frame(&mut buf, &req).await.unwrap();
        }
        let mut r = &buf[..];
        for req in sample_requests() {
            assert_eq!(read_frame::<_, ChunkRequest>(&mut r).await.unwrap(), req);
        }
        let huge = (MAX_FRAME_BYTES + 1).to_le_bytes();
        let err = read_frame::<_, ChunkRequest>(&mut &huge[..])
            .await
            .unwrap_err();
        assert!(matches!(err, CodecError::TooLarge { .. }), "{err}");
    }

    #[test]
    fn rejects_wrong_version_and_trailing_bytes() {
        let mut frame = encode(&ChunkRequest::Ping).unwrap();
        frame[4] = 99;
        assert!(matches!(
            decode::<ChunkRequest>(&frame),
            Err(CodecError::Version { got: 99 })
        ));
        let mut frame = encode(&ChunkRequest::Ping).unwrap();
        frame.push(0);
        let len = (frame.len() - 4) as u32;
        frame[..4].copy_from_slice(&len.to_le_bytes());
        assert!(decode::<ChunkRequest>(&frame).is_err());
    }

    #[test]
    fn huge_announced_vector_does_not_allocate() {
        // A List response claiming 2^60 entries: bincode's limit stops it with an error.
        let mut body = vec![];
        body.extend_from_slice(&PROTOCOL_VERSION.to_le_bytes());
        body.push(5); // ChunkResponse::List variant
        body.push(253); // varint u64 marker
        body.extend_from_slice(&(1u64 << 60).to_le_bytes());
        assert!(decode_payload::<ChunkResponse>(&body).is_err());
    }

    proptest! {
        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode::<ChunkRequest>(&bytes);
            let _ = decode::<ChunkResponse>(&bytes);
            let _ = decode_payload::<ChunkRequest>(&bytes);
        }

        #[test]
        fn mutated_frames_never_panic(idx in 0usize..64, val: u8, which in 0usize..4) {
            let mut frame = encode(&sample_requests()[which]).unwrap();
            let i = idx % frame.len();
            frame[i] = val;
            let _ = decode::<ChunkRequest>(&frame);
        }
    }
}
