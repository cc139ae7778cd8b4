//! RESP: the Redis wire protocol pieces the relay needs.
pub mod framer;
