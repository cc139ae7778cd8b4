//! RESP: encoding commands, parsing replies, framing the replication stream, and a blocking
//! client. Shared vocabulary of every stage; imports nothing of the data path.
pub mod client;
pub mod encode;
pub mod framer;
pub mod reply;
pub mod tls;
pub mod transport;

pub use client::{Client, ClientError};
pub use encode::encode_command;
pub use framer::{CommandFramer, Frame, FrameError};
pub use reply::{parse_reply, ProtocolError, Reply};
pub use transport::Transport;
