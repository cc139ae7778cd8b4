//! The source side: the fake replica that connects to each master.
pub mod twemproxy;
