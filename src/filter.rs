//! containerd's filter language: parse once, then match objects through an [`Adaptor`].
//!
//! ```text
//! filters  := filter*               several filter strings are OR-ed
//! filter   := selector ("," selector)*   selectors within one string are AND-ed
//! selector := fieldpath [operator value]  a bare field path tests presence
//! fieldpath:= field ("." field)*
//! field    := [A-Za-z_][A-Za-z0-9_]* | quoted
//! operator := "==" | "!=" | "~="
//! value    := quoted | [^\s,]+ | "/" regex "/" | "|" regex "|"   (the last two after ~=)
//! quoted   := a double-quoted string with Go escapes (\" \\ \n \t \r \xNN \uNNNN ...)
//! ```
//!
//! Semantics follow containerd: `==` needs the field present and equal; `!=` is true when the
//! field is absent or different; `~=` is an unanchored regular expression (RE2 syntax, the
//! `regex` crate) that an absent field never matches. Where containerd compares strings only,
//! a field the adaptor gives as a number (`size`) compares numerically for `==`/`!=`, so
//! `size==4096` and `size==04096` both match a 4096-byte blob.

use std::borrow::Cow;

use regex::Regex;

/// A field's value as an adaptor gives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value<'a> {
    /// A string.
    Str(Cow<'a, str>),
    /// A number (compared numerically by `==` and `!=`).
    Num(u64),
}

/// Gives the filter access to one object's fields.
pub trait Adaptor {
    /// The value at `path` (e.g. `["labels", "a.b"]`), or `None` when the object has no such
    /// field.
    fn field(&self, path: &[String]) -> Option<Value<'_>>;
}

/// A filter string that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("filter {input:?}: {message} at position {position}")]
pub struct ParseError {
    /// The whole filter string.
    pub input: String,
    /// Byte offset of the problem.
    pub position: usize,
    /// What was expected or found.
    pub message: String,
}

#[derive(Debug, Clone)]
enum Op {
    Present,
    Equal(String),
    NotEqual(String),
    Matches(Regex),
}

#[derive(Debug, Clone)]
struct Selector {
    path: Vec<String>,
    op: Op,
}

/// A parsed filter: an OR of AND-groups of selectors. An empty OR matches everything.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    any: Vec<Vec<Selector>>,
    always: bool,
}

/// Parses several filter strings, OR-ed. No strings, or any empty one, matches everything.
pub fn parse_all<S: AsRef<str>>(filters: &[S]) -> Result<Filter, ParseError> {
    let mut f = Filter {
        any: Vec::new(),
        always: filters.is_empty(),
    };
    for s in filters {
        let s = s.as_ref();
        if s.trim().is_empty() {
            f.always = true;
            continue;
        }
        f.any.push(Parser { input: s, pos: 0 }.filter()?);
    }
    Ok(f)
}

impl Filter {
    /// Whether the object behind `adaptor` matches.
    pub fn matches(&self, adaptor: &dyn Adaptor) -> bool {
        self.always
            || self
                .any
                .iter()
                .any(|all| all.iter().all(|s| s.matches(adaptor)))
    }

    /// Whether the filter matches everything.
    pub fn is_always(&self) -> bool {
        self.always
    }

    /// When every OR-branch holds `first.<key>==<value>`, one (key, value) per branch: the
    /// candidates can come from an index on (key, value), and [`Filter::matches`] then
    /// decides. `None` when some branch could match without such an equality.
    pub fn index_hints(&self, first: &str) -> Option<Vec<(String, String)>> {
        self.hints(|s| match (&s.op, s.path.as_slice()) {
            (Op::Equal(v), [f, key]) if f == first => Some((key.clone(), v.clone())),
            _ => None,
        })
    }

    /// When every OR-branch holds `field==<value>`, one value per branch; see
    /// [`Filter::index_hints`].
    pub fn equality_hints(&self, field: &str) -> Option<Vec<String>> {
        self.hints(|s| match (&s.op, s.path.as_slice()) {
            (Op::Equal(v), [f]) if f == field => Some(v.clone()),
            _ => None,
        })
    }

    fn hints<T>(&self, pick: impl Fn(&Selector) -> Option<T>) -> Option<Vec<T>> {
        if self.always || self.any.is_empty() {
            return None;
        }
        self.any
            .iter()
            .map(|all| all.iter().find_map(&pick))
            .collect()
    }
}

impl Selector {
    fn matches(&self, adaptor: &dyn Adaptor) -> bool {
        let value = adaptor.field(&self.path);
        match (&self.op, value) {
            (Op::Present, v) => v.is_some(),
            (Op::Equal(want), Some(v)) => equal(&v, want),
            (Op::Equal(_), None) => false,
            (Op::NotEqual(want), Some(v)) => !equal(&v, want),
            (Op::NotEqual(_), None) => true,
            (Op::Matches(re), Some(Value::Str(s))) => re.is_match(&s),
            (Op::Matches(re), Some(Value::Num(n))) => re.is_match(&n.to_string()),
            (Op::Matches(_), None) => false,
        }
    }
}

fn equal(v: &Value<'_>, want: &str) -> bool {
    match v {
        Value::Str(s) => s == want,
        Value::Num(n) => want.parse::<u64>().is_ok_and(|w| w == *n),
    }
}

struct Parser<'a> {
    input: &'a str,
    pos: usize,
}

impl Parser<'_> {
    fn err<T>(&self, at: usize, message: impl Into<String>) -> Result<T, ParseError> {
        Err(ParseError {
            input: self.input.to_owned(),
            position: at,
            message: message.into(),
        })
    }

    fn peek(&self) -> Option<char> {
        self.input[self.pos..].chars().next()
    }

    fn bump(&mut self) -> Option<char> {
        let c = self.peek()?;
        self.pos += c.len_utf8();
        Some(c)
    }

    fn skip_ws(&mut self) {
        while self.peek().is_some_and(char::is_whitespace) {
            self.bump();
        }
    }

    fn filter(&mut self) -> Result<Vec<Selector>, ParseError> {
        let mut all = vec![self.selector()?];
        loop {
            self.skip_ws();
            match self.peek() {
                None => return Ok(all),
                Some(',') => {
                    self.bump();
                    all.push(self.selector()?);
                }
                Some(c) => return self.err(self.pos, format!("expected ',' or end, found {c:?}")),
            }
        }
    }

    fn selector(&mut self) -> Result<Selector, ParseError> {
        let path = self.fieldpath()?;
        self.skip_ws();
        let at = self.pos;
        let rest = &self.input[self.pos..];
        let op = if rest.starts_with("==") {
            "=="
        } else if rest.starts_with("!=") {
            "!="
        } else if rest.starts_with("~=") {
            "~="
        } else {
            match self.peek() {
                None | Some(',') => {
                    return Ok(Selector {
                        path,
                        op: Op::Present,
                    });
                }
                Some(c) => {
                    return self.err(
                        at,
                        format!("expected an operator (==, !=, ~=), ',' or end, found {c:?}"),
                    );
                }
            }
        };
        self.pos += 2;
        self.skip_ws();
        let vat = self.pos;
        let value = self.value(op == "~=")?;
        let op = match op {
            "==" => Op::Equal(value),
            "!=" => Op::NotEqual(value),
            _ => match Regex::new(&value) {
                Ok(re) => Op::Matches(re),
                Err(e) => {
                    // The regex crate's message spans lines (it draws a caret); keep its last.
                    let why = e.to_string();
                    let why = why
                        .lines()
                        .rev()
                        .find(|l| !l.trim().is_empty())
                        .unwrap_or("")
                        .trim();
                    return self.err(vat, format!("invalid regular expression: {why}"));
                }
            },
        };
        Ok(Selector { path, op })
    }

    fn fieldpath(&mut self) -> Result<Vec<String>, ParseError> {
        let mut path = vec![self.field()?];
        while self.peek() == Some('.') {
            self.bump();
            path.push(self.field()?);
        }
        Ok(path)
    }

    fn field(&mut self) -> Result<String, ParseError> {
        self.skip_ws();
        let at = self.pos;
        match self.peek() {
            Some('"') => self.quoted(),
            Some(c) if c.is_ascii_alphabetic() || c == '_' => {
                while self
                    .peek()
                    .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
                {
                    self.bump();
                }
                Ok(self.input[at..self.pos].to_owned())
            }
            Some(c) => self.err(at, format!("expected a field name, found {c:?}")),
            None => self.err(at, "expected a field name, found end"),
        }
    }

    fn value(&mut self, regex: bool) -> Result<String, ParseError> {
        let at = self.pos;
        match self.peek() {
            Some('"') => self.quoted(),
            Some(d @ ('/' | '|')) if regex => self.delimited(d),
            Some(c) if c != ',' && !c.is_whitespace() => {
                while self.peek().is_some_and(|c| c != ',' && !c.is_whitespace()) {
                    self.bump();
                }
                Ok(self.input[at..self.pos].to_owned())
            }
            _ => self.err(at, "expected a value"),
        }
    }

    /// `/re/` or `|re|`: a backslash before the delimiter escapes it; everything else is kept
    /// as written, for the regex engine.
    fn delimited(&mut self, delim: char) -> Result<String, ParseError> {
        let at = self.pos;
        self.bump();
        let mut out = String::new();
        loop {
            match self.bump() {
                None => {
                    return self.err(
                        at,
                        format!("unterminated {delim}-quoted regular expression"),
                    );
                }
                Some(c) if c == delim => return Ok(out),
                Some('\\') if self.peek() == Some(delim) => {
                    self.bump();
                    out.push(delim);
                }
                Some(c) => out.push(c),
            }
        }
    }

    fn quoted(&mut self) -> Result<String, ParseError> {
        let at = self.pos;
        self.bump();
        let mut out = String::new();
        loop {
            let here = self.pos;
            match self.bump() {
                None => return self.err(at, "unterminated quoted string"),
                Some('"') => return Ok(out),
                Some('\\') => {
                    let c = match self.bump() {
                        Some('"') => '"',
                        Some('\\') => '\\',
                        Some('/') => '/',
                        Some('n') => '\n',
                        Some('t') => '\t',
                        Some('r') => '\r',
                        Some('a') => '\u{7}',
                        Some('b') => '\u{8}',
                        Some('f') => '\u{c}',
                        Some('v') => '\u{b}',
                        Some('x') => self.hex_escape(here, 2)?,
                        Some('u') => self.hex_escape(here, 4)?,
                        Some('U') => self.hex_escape(here, 8)?,
                        _ => return self.err(here, "invalid escape in quoted string"),
                    };
                    out.push(c);
                }
                Some(c) => out.push(c),
            }
        }
    }

    fn hex_escape(&mut self, at: usize, digits: usize) -> Result<char, ParseError> {
        let end = self.pos + digits;
        let hex = self
            .input
            .get(self.pos..end)
            .filter(|h| h.bytes().all(|b| b.is_ascii_hexdigit()));
        let Some(code) = hex.and_then(|h| u32::from_str_radix(h, 16).ok()) else {
            return self.err(at, "invalid hex escape in quoted string");
        };
        self.pos = end;
        char::from_u32(code).map_or_else(|| self.err(at, "escape is not a character"), Ok)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    struct Obj(BTreeMap<Vec<String>, Value<'static>>);

    impl Adaptor for Obj {
        fn field(&self, path: &[String]) -> Option<Value<'_>> {
            self.0.get(path).cloned()
        }
    }

    fn obj(fields: &[(&str, Value<'static>)]) -> Obj {
        Obj(fields
            .iter()
            .map(|(k, v)| (k.split('.').map(str::to_owned).collect(), v.clone()))
            .collect())
    }

    fn s(v: &'static str) -> Value<'static> {
        Value::Str(Cow::Borrowed(v))
    }

    fn m(filters: &[&str], o: &Obj) -> bool {
        parse_all(filters).unwrap().matches(o)
    }

    #[test]
    fn operators_and_presence() {
        let o = obj(&[
            ("name", s("alpine")),
            ("labels.team", s("build-cache")),
            ("size", Value::Num(4096)),
        ]);
        assert!(m(&["name==alpine"], &o));
        assert!(!m(&["name==alp"], &o));
        assert!(m(&["name!=busybox"], &o));
        assert!(!m(&["name!=alpine"], &o));
        assert!(m(&["labels.team~=build"], &o), "unanchored");
        assert!(!m(&["labels.team~=^cache"], &o));
        assert!(m(&["labels.team"], &o));
        assert!(!m(&["labels.other"], &o));
        assert!(m(&["size==4096", "name==x"], &o), "OR");
        assert!(!m(&["size==4096,name==x"], &o), "AND");
        assert!(m(&["size==04096"], &o), "numeric");
        assert!(m(&["size!=5"], &o));
        assert!(!m(&["size==four"], &o));
        assert!(m(&["size~=^40"], &o));
        assert!(m(&[], &o) && m(&[""], &o) && m(&["  "], &o));
    }

    #[test]
    fn missing_fields_follow_containerd() {
        let o = obj(&[]);
        assert!(!m(&["a==x"], &o));
        assert!(m(&["a!=x"], &o));
        assert!(!m(&["a~=x"], &o));
        assert!(!m(&["a"], &o));
    }

    #[test]
    fn quoting() {
        let o = obj(&[("labels.com.example/key", s("x y")), ("v", s("a,b\"c"))]);
        let mut map = BTreeMap::new();
        map.insert(
            vec!["labels".to_owned(), "com.example/key".to_owned()],
            s("x y"),
        );
        map.insert(vec!["v".to_owned()], s("a,b\"c"));
        let o2 = Obj(map);
        drop(o);
        assert!(m(&[r#"labels."com.example/key"=="x y""#], &o2));
        assert!(m(&[r#"labels."com.example/key""#], &o2));
        assert!(m(&[r#"v=="a,b\"c""#], &o2));
        assert!(m(&[r#"v~=/b"c/"#], &o2));
        assert!(m(&[r#"v~=|a,b|"#], &o2));
        let p = obj(&[("p", s("/usr/bin"))]);
        assert!(m(&[r"p~=/^\/usr/"], &p), "escaped delimiter");
        assert!(m(&["p~=|^/usr|"], &p));
        assert!(m(&[r#"p=="\x2fusr\u002fbin""#], &p));
        assert!(m(&[" p == /usr/bin , p "], &p), "whitespace around tokens");
    }

    #[test]
    fn hints() {
        let f = parse_all(&["labels.a==1,size==3", "labels.b==2"]).unwrap();
        assert_eq!(
            f.index_hints("labels"),
            Some(vec![("a".into(), "1".into()), ("b".into(), "2".into())])
        );
        assert_eq!(
            parse_all(&["labels.a==1", "size==3"])
                .unwrap()
                .index_hints("labels"),
            None
        );
        assert_eq!(
            parse_all(&["labels.a!=1"]).unwrap().index_hints("labels"),
            None
        );
        assert_eq!(parse_all::<&str>(&[]).unwrap().index_hints("labels"), None);
        assert_eq!(
            parse_all(&["labels.a==1", ""])
                .unwrap()
                .index_hints("labels"),
            None
        );
        assert_eq!(
            parse_all(&["digest==x"]).unwrap().equality_hints("digest"),
            Some(vec!["x".into()])
        );
        assert_eq!(
            parse_all(&["digest~=x"]).unwrap().equality_hints("digest"),
            None
        );
    }

    #[test]
    fn malformed_filters_point_at_the_problem() {
        let cases: &[(&str, usize)] = &[
            ("labels.a==", 10),
            ("==x", 0),
            ("labels.\"unterminated", 7),
            ("a=b", 1),
            ("a<b", 1),
            ("labels.a~=(", 10),
            ("a,,b", 2),
            ("a.", 2),
            ("labels.a==x,", 12),
            ("a==x y", 5),
            ("1abc", 0),
            ("a~=/unterminated", 3),
            ("a==\"bad\\q\"", 7),
            ("a==\"\\xZZ\"", 4),
            (".a", 0),
            ("a..b", 2),
        ];
        for (bad, pos) in cases {
            let err = parse_all(&[*bad]).expect_err(bad);
            assert_eq!(err.position, *pos, "{bad}: {err}");
            assert!(err.to_string().contains("position"), "{err}");
        }
    }

    #[test]
    fn never_panics_on_prefixes() {
        let good = [
            r#"labels."com.example/k"~=/a\/b/,size==1"#,
            r#"a=="\u00e9\x41",b!=c"#,
            "x~=|y|",
        ];
        for g in good {
            for end in (0..=g.len()).filter(|e| g.is_char_boundary(*e)) {
                let _ = parse_all(&[&g[..end]]);
            }
        }
    }
}
