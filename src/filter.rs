//! TEMPORARY stub until the real parser lands (replaced by the helper's module).
#![allow(missing_docs, dead_code)]
use std::borrow::Cow;
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value<'a> { Str(Cow<'a, str>), Num(u64) }
pub trait Adaptor { fn field(&self, path: &[String]) -> Option<Value<'_>>; }
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("filter {input:?}: {message} at position {position}")]
pub struct ParseError { pub input: String, pub position: usize, pub message: String }
#[derive(Debug, Clone)]
pub struct Filter;
pub fn parse_all<S: AsRef<str>>(_f: &[S]) -> Result<Filter, ParseError> { Ok(Filter) }
impl Filter {
    pub fn matches(&self, _a: &dyn Adaptor) -> bool { true }
    pub fn index_hints(&self, _first: &str) -> Option<Vec<(String, String)>> { None }
    pub fn equality_hints(&self, _f: &str) -> Option<Vec<String>> { None }
    pub fn is_always(&self) -> bool { true }
}
