//! The target's command table (`COMMAND`): which commands it knows and their arity, so that a
//! command it would refuse while queueing (unknown there, renamed away, wrong number of
//! arguments, unknown subcommand) is isolated before it joins a batch.
//!
//! Why before, and not on the EXECABORT: the writers pipeline their batch transactions, so by
//! the time an EXECABORT comes back the next batches are already on the target and may have
//! run; sending the aborted batch's other commands again after them would break the order per
//! key, and its record would go back in time. Refusals of this kind are a fact of the target's
//! table, so the same check Redis makes at queue time (`processCommand`: lookup, then
//! `arity > 0 ? argc == arity : argc >= -arity`) is made here, once per command.

use std::collections::HashMap;

use bytes::Bytes;

use crate::resp::client::Client;
use crate::resp::Reply;

/// Why the target would refuse a command at queue time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The target does not know the command (older version, renamed or disabled).
    UnknownCommand,
    /// The target knows the command with another arity.
    WrongArity,
    /// The target knows the command but not this subcommand.
    UnknownSubcommand,
}

impl Refusal {
    /// The `kind` label of `redis_relay_target_refused_total`.
    pub fn kind(self) -> &'static str {
        match self {
            Refusal::UnknownCommand => "unknown-command",
            Refusal::WrongArity => "wrong-arity",
            Refusal::UnknownSubcommand => "unknown-subcommand",
        }
    }
}

#[derive(Debug, Clone)]
struct Entry {
    arity: i64,
    /// Subcommands (lower case, without the `parent|` part) with their arity; empty when the
    /// command has none (or the target is older than 7.0, which does not list them).
    subcommands: HashMap<Vec<u8>, i64>,
}

/// The commands of a target, by upper-case name.
#[derive(Debug, Clone, Default)]
pub struct CommandTable {
    commands: HashMap<Vec<u8>, Entry>,
}

impl CommandTable {
    /// Read the table with `COMMAND`. `None` when the target has no COMMAND (before 2.8.13)
    /// or answers something else: nothing is checked then.
    pub fn read(c: &mut Client) -> std::io::Result<Option<CommandTable>> {
        match c.call(&["COMMAND"])? {
            Reply::Array(Some(items)) => Ok(Self::from_reply(&items)),
            _ => Ok(None),
        }
    }

    /// The table from the elements of a `COMMAND` reply (`None` if one is malformed).
    pub fn from_reply(items: &[Reply]) -> Option<CommandTable> {
        let mut commands = HashMap::with_capacity(items.len());
        for item in items {
            let (name, arity, fields) = name_arity(item)?;
            let mut subcommands = HashMap::new();
            if let Some(Reply::Array(Some(subs))) = fields.get(9) {
                for s in subs {
                    let (sub, arity, _) = name_arity(s)?;
                    let sub = match sub.iter().position(|&b| b == b'|') {
                        Some(at) => sub[at + 1..].to_vec(),
                        None => sub,
                    };
                    subcommands.insert(sub.to_ascii_lowercase(), arity);
                }
            }
            commands.insert(name.to_ascii_uppercase(), Entry { arity, subcommands });
        }
        Some(CommandTable { commands })
    }

    /// Whether the target would refuse `args` (name first; `up`: the name in upper case) at
    /// queue time.
    pub fn refusal(&self, up: &[u8], args: &[Bytes]) -> Option<Refusal> {
        let Some(entry) = self.commands.get(up) else {
            return Some(Refusal::UnknownCommand);
        };
        if !arity_ok(entry.arity, args.len()) {
            return Some(Refusal::WrongArity);
        }
        if entry.subcommands.is_empty() || args.len() < 2 {
            return None;
        }
        match entry.subcommands.get(&args[1].to_ascii_lowercase()) {
            None => Some(Refusal::UnknownSubcommand),
            Some(&a) if !arity_ok(a, args.len()) => Some(Refusal::WrongArity),
            Some(_) => None,
        }
    }

    pub fn len(&self) -> usize {
        self.commands.len()
    }

    pub fn is_empty(&self) -> bool {
        self.commands.is_empty()
    }
}

/// Redis's own arity rule: positive is exact, negative is a minimum.
fn arity_ok(arity: i64, argc: usize) -> bool {
    let argc = argc as i64;
    if arity >= 0 {
        argc == arity
    } else {
        argc >= -arity
    }
}

/// The name, the arity and all fields of one entry of a `COMMAND` reply.
fn name_arity(item: &Reply) -> Option<(Vec<u8>, i64, &[Reply])> {
    let Reply::Array(Some(fields)) = item else {
        return None;
    };
    match (fields.first(), fields.get(1)) {
        (Some(Reply::Bulk(Some(name))), Some(Reply::Integer(arity))) => {
            Some((name.to_vec(), *arity, fields))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(name: &str, arity: i64, subs: Option<Vec<Reply>>) -> Reply {
        let mut f = vec![
            Reply::Bulk(Some(Bytes::from(name.to_string()))),
            Reply::Integer(arity),
        ];
        if let Some(subs) = subs {
            f.extend((2..9).map(|_| Reply::Array(Some(vec![]))));
            f.push(Reply::Array(Some(subs)));
        }
        Reply::Array(Some(f))
    }

    fn args(words: &[&str]) -> Vec<Bytes> {
        words.iter().map(|w| Bytes::from(w.to_string())).collect()
    }

    #[test]
    fn refuses_what_redis_refuses_at_queue_time() {
        let table = CommandTable::from_reply(&[
            entry("incr", 2, None),
            entry("rpush", -3, None),
            entry("object", -2, Some(vec![entry("object|freq", 3, None)])),
        ])
        .unwrap();
        assert_eq!(table.refusal(b"INCR", &args(&["incr", "k"])), None);
        assert_eq!(
            table.refusal(b"INCR", &args(&["incr", "k", "x"])),
            Some(Refusal::WrongArity)
        );
        assert_eq!(
            table.refusal(b"RPUSH", &args(&["rpush", "l", "a", "b"])),
            None
        );
        assert_eq!(
            table.refusal(b"RPUSH", &args(&["rpush", "l"])),
            Some(Refusal::WrongArity)
        );
        assert_eq!(
            table.refusal(b"APPEND", &args(&["append", "k", "v"])),
            Some(Refusal::UnknownCommand)
        );
        assert_eq!(
            table.refusal(b"OBJECT", &args(&["object", "FREQ", "k"])),
            None
        );
        assert_eq!(
            table.refusal(b"OBJECT", &args(&["object", "nope", "k"])),
            Some(Refusal::UnknownSubcommand)
        );
        assert!(CommandTable::from_reply(&[Reply::Integer(1)]).is_none());
    }
}
