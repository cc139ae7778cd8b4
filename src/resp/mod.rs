//! RESP: encoding commands for the target, parsing its replies, framing the replication stream.
pub mod encode;
pub mod reply;

pub use encode::encode_command;
pub use reply::{parse_reply, ProtocolError, Reply};
