//! RESP: encoding commands for the target, parsing its replies, framing the replication stream.
pub mod encode;
pub mod framer;
pub mod reply;

pub use encode::encode_command;
pub use framer::{CommandFramer, Frame, FrameError};
pub use reply::{parse_reply, ProtocolError, Reply};
