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
use parking_lot::Mutex;

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

/// Asks the target about one command name (`COMMAND INFO name`): its arity, `None` when the
/// target does not know it.
pub type AskCommand = Box<dyn Fn(&[u8]) -> std::io::Result<Option<i64>> + Send + Sync>;

/// The commands of a target, by upper-case name.
#[derive(Default)]
pub struct CommandTable {
    commands: HashMap<Vec<u8>, Entry>,
    /// A name not in the list is asked about once before it is refused: `rename-command X Y`
    /// leaves X's entry listed under "x" while the command answers to "Y" only (the list
    /// drops X by `COMMAND INFO`, and Y is found here).
    ask: Option<AskCommand>,
    /// What the target said of the names asked about (arity, or unknown).
    asked: Mutex<HashMap<Vec<u8>, Option<i64>>>,
}

impl std::fmt::Debug for CommandTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CommandTable")
            .field("commands", &self.commands.len())
            .field("asked", &self.asked.lock().len())
            .finish()
    }
}

impl CommandTable {
    /// Read the table with `COMMAND`. `None` when the target has no COMMAND (before 2.8.13)
    /// or answers something else: nothing is checked then.
    /// The names the target lists but does not answer to (renamed or disabled with
    /// `rename-command`) are left out; `ask` is used for names not in the list.
    pub fn read(c: &mut Client, ask: Option<AskCommand>) -> std::io::Result<Option<CommandTable>> {
        let Reply::Array(Some(items)) = c.call(&["COMMAND"])? else {
            return Ok(None);
        };
        let Some(mut table) = Self::from_reply(&items) else {
            return Ok(None);
        };
        let names: Vec<Vec<u8>> = table.commands.keys().cloned().collect();
        let mut args: Vec<&[u8]> = vec![b"COMMAND", b"INFO"];
        args.extend(names.iter().map(Vec::as_slice));
        if let Reply::Array(Some(infos)) = c.call(&args)? {
            for (name, info) in names.iter().zip(infos) {
                if matches!(info, Reply::Array(None) | Reply::Bulk(None)) {
                    table.commands.remove(name);
                }
            }
        }
        table.ask = ask;
        Ok(Some(table))
    }

    /// The arity of `name` (upper case) as `COMMAND INFO` reports it, `None` when unknown.
    pub fn info_arity(c: &mut Client, name: &[u8]) -> std::io::Result<Option<i64>> {
        Ok(match c.call(&[&b"COMMAND"[..], b"INFO", name])? {
            Reply::Array(Some(items)) => items.first().and_then(|i| Some(name_arity(i)?.1)),
            _ => None,
        })
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
        Some(CommandTable {
            commands,
            ..CommandTable::default()
        })
    }

    /// Whether the target would refuse `args` (name first; `up`: the name in upper case) at
    /// queue time.
    pub fn refusal(&self, up: &[u8], args: &[Bytes]) -> Option<Refusal> {
        let Some(entry) = self.commands.get(up) else {
            return match self.asked_arity(up) {
                None => Some(Refusal::UnknownCommand),
                Some(a) if !arity_ok(a, args.len()) => Some(Refusal::WrongArity),
                Some(_) => None,
            };
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

    /// The arity of a name not in the list, asking the target the first time. An answer that
    /// could not be had counts as known (the command goes to the target, which decides).
    fn asked_arity(&self, up: &[u8]) -> Option<i64> {
        let mut asked = self.asked.lock();
        if let Some(known) = asked.get(up) {
            return *known;
        }
        let known = match &self.ask {
            None => None,
            Some(ask) => match ask(up) {
                Ok(arity) => arity,
                Err(e) => {
                    tracing::warn!(
                        "asking the target about {}: {e}",
                        String::from_utf8_lossy(up)
                    );
                    return Some(-1);
                }
            },
        };
        asked.insert(up.to_vec(), known);
        known
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

    #[test]
    fn a_name_not_listed_is_asked_about_once() {
        // `rename-command APPEND MYAPPEND`: the list says "append", the target answers to
        // MYAPPEND only.
        let mut table = CommandTable::from_reply(&[entry("incr", 2, None)]).unwrap();
        let asks = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = asks.clone();
        table.ask = Some(Box::new(move |name: &[u8]| {
            counted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            Ok((name == b"MYAPPEND").then_some(3))
        }));
        let append = args(&["myappend", "k", "v"]);
        assert_eq!(table.refusal(b"MYAPPEND", &append), None);
        assert_eq!(table.refusal(b"MYAPPEND", &append), None);
        assert_eq!(
            table.refusal(b"MYAPPEND", &args(&["myappend", "k"])),
            Some(Refusal::WrongArity)
        );
        assert_eq!(
            table.refusal(b"NOPE", &args(&["nope"])),
            Some(Refusal::UnknownCommand)
        );
        assert_eq!(asks.load(std::sync::atomic::Ordering::Relaxed), 2);
    }
}
