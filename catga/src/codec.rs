//! Codecs turn messages into bytes for the wire. In memory, messages pass as
//! values and no codec runs; over NATS every payload goes through the
//! message's codec ([`Json`] unless the contract names another).

use serde::Serialize;
use serde::de::DeserializeOwned;

/// A wire format for message payloads.
///
/// ```
/// use catga::{Codec, Json};
/// let bytes = Json::encode(&vec![1, 2, 3]).unwrap();
/// assert_eq!(bytes, b"[1,2,3]");
/// let back: Vec<u32> = Json::decode(&bytes).unwrap();
/// assert_eq!(back, [1, 2, 3]);
/// assert!(Json::decode::<Vec<u32>>(b"{oops").is_err());
/// ```
pub trait Codec: Send + Sync + 'static {
    /// The MIME type written in the `Content-Type` header.
    const CONTENT_TYPE: &'static str;
    /// Encode a value.
    fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, CodecError>;
    /// Decode a value; a malformed or wrongly typed payload is an error.
    fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError>;
}

/// Why a codec failed, in the codec's own words.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct CodecError(pub String);

/// JSON through `serde_json`: the default wire format, readable by any client.
#[derive(Debug, Clone, Copy, Default)]
pub struct Json;

impl Codec for Json {
    const CONTENT_TYPE: &'static str = "application/json";

    fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, CodecError> {
        serde_json::to_vec(value).map_err(|e| CodecError(e.to_string()))
    }

    fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
        serde_json::from_slice(bytes).map_err(|e| CodecError(e.to_string()))
    }
}
