//! Best-effort metadata extraction from a function library's source (for the canonical JSON
//! and for logs): the `#!<engine> name=<lib>` header and the functions registered with
//! `redis.register_function('name', cb)` or `redis.register_function{function_name=..., ...}`.
//!
//! This is not a Lua parser; it understands string literals, comments and bracket nesting,
//! which is what library headers and registration calls use in practice.

/// One registered function.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FunctionInfo {
    pub name: String,
    pub description: Option<String>,
    /// Sorted flags (`no-writes`, `allow-oom`, ...).
    pub flags: Vec<String>,
}

/// A library's metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LibraryInfo {
    pub library_name: String,
    /// The engine name as Redis reports it (upper case, e.g. `LUA`).
    pub engine: String,
    /// Sorted by name.
    pub functions: Vec<FunctionInfo>,
}

/// Parse the shebang header and the registration calls of a library.
pub fn parse_library(code: &[u8]) -> Option<LibraryInfo> {
    let text = String::from_utf8_lossy(code);
    let first = text.lines().next()?;
    let rest = first.strip_prefix("#!")?;
    let mut parts = rest.split_whitespace();
    let engine = parts.next()?.to_ascii_uppercase();
    let library_name = parts.find_map(|p| p.strip_prefix("name="))?.to_string();
    let b = text.as_bytes();
    let mut functions = Vec::new();
    let needle = b"redis.register_function";
    let mut i = 0;
    while i < b.len() {
        if let Some(skip) = skip_comment_or_string(b, i) {
            i = skip;
            continue;
        }
        if b[i..].starts_with(needle) {
            i += needle.len();
            let j = skip_ws(b, i);
            if let Some(f) = parse_registration(b, j) {
                functions.push(f);
            }
            continue;
        }
        i += 1;
    }
    functions.sort_by(|a, b| a.name.cmp(&b.name));
    Some(LibraryInfo {
        library_name,
        engine,
        functions,
    })
}

fn skip_ws(b: &[u8], mut i: usize) -> usize {
    while i < b.len() && b[i].is_ascii_whitespace() {
        i += 1;
    }
    i
}

/// If a comment or string starts at `i`, return the index after it.
fn skip_comment_or_string(b: &[u8], i: usize) -> Option<usize> {
    if b[i..].starts_with(b"--") {
        if let Some((_, end)) = long_bracket(b, i + 2) {
            return Some(end);
        }
        let mut j = i + 2;
        while j < b.len() && b[j] != b'\n' {
            j += 1;
        }
        return Some(j);
    }
    if b[i] == b'\'' || b[i] == b'"' || b[i] == b'[' {
        return lua_string(b, i).map(|(_, e)| e);
    }
    None
}

/// `[[...]]` / `[==[...]==]` starting at `i`: (content, index after).
fn long_bracket(b: &[u8], i: usize) -> Option<(String, usize)> {
    if b.get(i) != Some(&b'[') {
        return None;
    }
    let mut j = i + 1;
    let mut level = 0;
    while b.get(j) == Some(&b'=') {
        level += 1;
        j += 1;
    }
    if b.get(j) != Some(&b'[') {
        return None;
    }
    let start = j + 1;
    let mut close = vec![b']'];
    close.extend(std::iter::repeat_n(b'=', level));
    close.push(b']');
    let pos = b[start..]
        .windows(close.len())
        .position(|w| w == close.as_slice())?;
    let content = String::from_utf8_lossy(&b[start..start + pos]).into_owned();
    Some((content, start + pos + close.len()))
}

/// A Lua string literal at `i`: (decoded text, index after).
fn lua_string(b: &[u8], i: usize) -> Option<(String, usize)> {
    let q = *b.get(i)?;
    if q == b'[' {
        return long_bracket(b, i);
    }
    if q != b'\'' && q != b'"' {
        return None;
    }
    let mut out = Vec::new();
    let mut j = i + 1;
    while j < b.len() {
        let c = b[j];
        if c == q {
            return Some((String::from_utf8_lossy(&out).into_owned(), j + 1));
        }
        if c == b'\\' {
            j += 1;
            let e = *b.get(j)?;
            match e {
                b'n' => out.push(b'\n'),
                b't' => out.push(b'\t'),
                b'r' => out.push(b'\r'),
                b'0'..=b'9' => {
                    let mut v: u32 = 0;
                    let mut k = 0;
                    while k < 3 && j < b.len() && b[j].is_ascii_digit() {
                        v = v * 10 + u32::from(b[j] - b'0');
                        j += 1;
                        k += 1;
                    }
                    out.push(v.min(255) as u8);
                    continue;
                }
                other => out.push(other),
            }
            j += 1;
            continue;
        }
        out.push(c);
        j += 1;
    }
    None
}

/// Index after the bracket matching the opener at `i` (strings and comments skipped).
fn matching(b: &[u8], i: usize) -> Option<usize> {
    let mut depth = 0i32;
    let mut j = i;
    while j < b.len() {
        if let Some(e) = skip_comment_or_string(b, j) {
            if e > j {
                j = e;
                continue;
            }
        }
        match b[j] {
            b'(' | b'{' | b'[' => depth += 1,
            b')' | b'}' | b']' => {
                depth -= 1;
                if depth == 0 {
                    return Some(j + 1);
                }
            }
            _ => {}
        }
        j += 1;
    }
    None
}

fn parse_registration(b: &[u8], i: usize) -> Option<FunctionInfo> {
    match *b.get(i)? {
        b'{' => parse_table(b, i),
        b'(' => {
            let j = skip_ws(b, i + 1);
            match *b.get(j)? {
                b'{' => parse_table(b, j),
                _ => {
                    let (name, _) = lua_string(b, j)?;
                    Some(FunctionInfo {
                        name,
                        description: None,
                        flags: Vec::new(),
                    })
                }
            }
        }
        _ => None,
    }
}

/// `{function_name='x', callback=..., flags={'a','b'}, description='d'}` at `i`.
fn parse_table(b: &[u8], i: usize) -> Option<FunctionInfo> {
    let end = matching(b, i)?;
    let mut name = None;
    let mut description = None;
    let mut flags = Vec::new();
    let mut j = i + 1;
    let mut depth = 0i32;
    while j < end - 1 {
        if let Some(e) = skip_comment_or_string(b, j) {
            if e > j {
                j = e;
                continue;
            }
        }
        let c = b[j];
        match c {
            b'(' | b'{' | b'[' => {
                depth += 1;
                j += 1;
                continue;
            }
            b')' | b'}' | b']' => {
                depth -= 1;
                j += 1;
                continue;
            }
            _ => {}
        }
        if depth == 0 && (c.is_ascii_alphabetic() || c == b'_') && (j == 0 || !is_ident(b[j - 1])) {
            let s = j;
            while j < end && is_ident(b[j]) {
                j += 1;
            }
            let ident = &b[s..j];
            let k = skip_ws(b, j);
            if b.get(k) == Some(&b'=') && b.get(k + 1) != Some(&b'=') {
                let v = skip_ws(b, k + 1);
                match ident {
                    b"function_name" => name = lua_string(b, v).map(|x| x.0),
                    b"description" => description = lua_string(b, v).map(|x| x.0),
                    b"flags" if b.get(v) == Some(&b'{') => {
                        let fe = matching(b, v)?;
                        let mut x = v + 1;
                        while x < fe - 1 {
                            if let Some((s, e)) = lua_string(b, x) {
                                flags.push(s);
                                x = e;
                            } else {
                                x += 1;
                            }
                        }
                        j = fe;
                    }
                    _ => {}
                }
            }
            continue;
        }
        j += 1;
    }
    flags.sort();
    Some(FunctionInfo {
        name: name?,
        description,
        flags,
    })
}

fn is_ident(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_'
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn corpus_library() {
        let code = b"#!lua name=corpuslib\nredis.register_function('corpus_set', function(keys, args)\n  redis.call('SET', keys[1], args[1])\n  return redis.call('INCR', keys[2])\nend)\nredis.register_function{function_name='corpus_get', callback=function(keys, args) return redis.call('GET', keys[1]) end, flags={'no-writes'}, description='read a key'}\n";
        let lib = parse_library(code).unwrap();
        assert_eq!(lib.library_name, "corpuslib");
        assert_eq!(lib.engine, "LUA");
        assert_eq!(
            lib.functions,
            vec![
                FunctionInfo {
                    name: "corpus_get".into(),
                    description: Some("read a key".into()),
                    flags: vec!["no-writes".into()]
                },
                FunctionInfo {
                    name: "corpus_set".into(),
                    description: None,
                    flags: vec![]
                },
            ]
        );
    }
}
