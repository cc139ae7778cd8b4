//! Accumulation of a key's decoded elements, and the switch to chunked delivery for big values.
//!
//! A value is held whole while its decoded size stays under `big_value_bytes` (so small keys
//! arrive as one [`Event::Entry`], restorable in one `RESTORE`). The first element that pushes
//! it over emits [`Event::BigStart`] and re-emits what was held as bounded chunks; from then on
//! elements are flushed whenever a chunk is full, so memory stays bounded for any value size.

use super::error::HandlerError;
use super::model::*;
use bytes::Bytes;

/// The event sink as the decoding code sees it.
pub(crate) type Emit<'a> = dyn FnMut(Event) -> Result<(), HandlerError> + 'a;

/// Fixed accounting overhead per element, so that many tiny elements also count.
pub(crate) const ELEM_OVERHEAD: usize = 16;

/// One decoded element of a collection.
pub(crate) enum Item {
    List(Bytes),
    Set(Bytes),
    ZSet(Bytes, f64),
    Hash(HashField),
    Stream(StreamEntry),
}

impl Item {
    /// A hash field without a TTL.
    pub(crate) fn field(field: Bytes, value: Bytes) -> Item {
        Item::Hash(HashField {
            field,
            value,
            expire_ms: None,
        })
    }

    fn size(&self) -> usize {
        ELEM_OVERHEAD
            + match self {
                Item::List(b) | Item::Set(b) => b.len(),
                Item::ZSet(b, _) => b.len() + 8,
                Item::Hash(h) => h.field.len() + h.value.len() + 8,
                Item::Stream(e) => {
                    16 + e
                        .fields
                        .iter()
                        .map(|(f, v)| f.len() + v.len() + ELEM_OVERHEAD)
                        .sum::<usize>()
                }
            }
    }
}

/// Limits for whole values and chunks (copied from the parse options).
#[derive(Clone, Copy)]
pub(crate) struct Limits {
    pub big: usize,
    pub chunk_bytes: usize,
    pub chunk_elems: usize,
}

pub(crate) struct Collector {
    meta: Option<KeyMeta>,
    pub(crate) big: bool,
    acc: Value,
    acc_bytes: usize,
    acc_elems: usize,
    total: usize,
    lim: Limits,
}

fn empty_like(v: &Value) -> Value {
    match v {
        Value::List(_) => Value::List(Vec::new()),
        Value::Set(_) => Value::Set(Vec::new()),
        Value::ZSet(_) => Value::ZSet(Vec::new()),
        Value::Hash(_) => Value::Hash(Vec::new()),
        Value::Stream(_) => Value::Stream(Box::new(StreamValue {
            entries: Vec::new(),
            meta: None,
        })),
        Value::String(_) => Value::String(Bytes::new()),
        Value::Module { module_id } => Value::Module {
            module_id: *module_id,
        },
        Value::Undecoded => Value::Undecoded,
    }
}

impl Collector {
    /// `empty` selects the kind of value being collected.
    pub(crate) fn new(meta: KeyMeta, empty: Value, lim: Limits) -> Self {
        Collector {
            meta: Some(meta),
            big: false,
            acc: empty,
            acc_bytes: 0,
            acc_elems: 0,
            total: 0,
            lim,
        }
    }

    #[inline]
    fn append(&mut self, item: Item, sz: usize) {
        match (&mut self.acc, item) {
            (Value::List(v), Item::List(b)) => v.push(b),
            (Value::Set(v), Item::Set(b)) => v.push(b),
            (Value::ZSet(v), Item::ZSet(b, s)) => v.push((b, s)),
            (Value::Hash(v), Item::Hash(h)) => v.push(h),
            (Value::Stream(s), Item::Stream(e)) => s.entries.push(e),
            _ => debug_assert!(false, "collector kind mismatch"),
        }
        self.acc_bytes += sz;
        self.acc_elems += 1;
    }

    #[inline]
    pub(crate) fn push(&mut self, item: Item, emit: &mut Emit<'_>) -> Result<(), HandlerError> {
        let sz = item.size();
        if !self.big {
            self.total = self.total.saturating_add(sz);
            self.append(item, sz);
            if self.total > self.lim.big {
                self.go_big(emit)?;
            }
            Ok(())
        } else {
            self.push_big(item, sz, emit)
        }
    }

    fn push_big(&mut self, item: Item, sz: usize, emit: &mut Emit<'_>) -> Result<(), HandlerError> {
        if self.acc_elems > 0
            && (self.acc_elems >= self.lim.chunk_elems
                || self.acc_bytes + sz > self.lim.chunk_bytes)
        {
            self.flush(emit)?;
        }
        self.append(item, sz);
        Ok(())
    }

    /// Switch to chunked delivery: announce the key and re-emit what was held in chunks.
    pub(crate) fn go_big(&mut self, emit: &mut Emit<'_>) -> Result<(), HandlerError> {
        if self.big {
            return Ok(());
        }
        self.big = true;
        if let Some(m) = self.meta.take() {
            emit(Event::BigStart(m))?;
        }
        let held = std::mem::replace(&mut self.acc, Value::List(Vec::new()));
        self.acc = empty_like(&held);
        self.acc_bytes = 0;
        self.acc_elems = 0;
        match held {
            Value::List(v) => {
                for b in v {
                    let it = Item::List(b);
                    let sz = it.size();
                    self.push_big(it, sz, emit)?;
                }
            }
            Value::Set(v) => {
                for b in v {
                    let it = Item::Set(b);
                    let sz = it.size();
                    self.push_big(it, sz, emit)?;
                }
            }
            Value::ZSet(v) => {
                for (b, s) in v {
                    let it = Item::ZSet(b, s);
                    let sz = it.size();
                    self.push_big(it, sz, emit)?;
                }
            }
            Value::Hash(v) => {
                for h in v {
                    let it = Item::Hash(h);
                    let sz = it.size();
                    self.push_big(it, sz, emit)?;
                }
            }
            Value::Stream(s) => {
                for e in s.entries {
                    let it = Item::Stream(e);
                    let sz = it.size();
                    self.push_big(it, sz, emit)?;
                }
            }
            Value::String(_) | Value::Module { .. } | Value::Undecoded => {}
        }
        Ok(())
    }

    fn flush(&mut self, emit: &mut Emit<'_>) -> Result<(), HandlerError> {
        let empty = empty_like(&self.acc);
        let chunk = std::mem::replace(&mut self.acc, empty);
        self.acc_bytes = 0;
        self.acc_elems = 0;
        emit(Event::BigChunk(chunk))
    }

    /// Deliver the end of the value: the whole [`Event::Entry`], or the last chunk and
    /// [`Event::BigEnd`]. `stream_meta` is attached to streams (whole value or last chunk).
    pub(crate) fn finish(
        mut self,
        raw: Option<Bytes>,
        stream_meta: Option<StreamMeta>,
        emit: &mut Emit<'_>,
    ) -> Result<(), HandlerError> {
        let is_stream = matches!(self.acc, Value::Stream(_));
        if let (Value::Stream(s), Some(m)) = (&mut self.acc, stream_meta) {
            s.meta = Some(m);
        }
        if !self.big {
            let meta = self.meta.take().expect("meta present until big");
            emit(Event::Entry(Entry {
                meta,
                value: self.acc,
                raw,
            }))
        } else {
            if self.acc_elems > 0 || is_stream {
                emit(Event::BigChunk(self.acc))?;
            }
            emit(Event::BigEnd)
        }
    }
}
