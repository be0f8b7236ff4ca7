//! The value shapes a key can have (a switch, an integer, a text, a list, the users table): how
//! each is read from TOML or from text (a flag, an environment variable, a coTURN line) and
//! written back as TOML. The key table ([`super::keys`]) gives each key one shape.

use super::values::{self, invalid, REDACTED};
use super::{AllocationLimit, ConfigError, ExternalIp, LogFormat, Secret};
use crate::auth::StaticKey;
use crate::policy::IpRange;
use std::marker::PhantomData;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use toml::Value;

/// What a key's value looks like on the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arity {
    /// A switch: `--key` alone means true, `--key=false` false.
    Switch,
    /// One value; a later one replaces it.
    One,
    /// Repeatable (and comma-separated in flags and the environment).
    Many,
}

/// A raw value as a source gives it.
pub(super) enum Input<'a> {
    Toml(&'a Value),
    /// Flag, environment or coTURN values, in order (more than one only for repeatable keys).
    Text(&'a [String]),
}

pub(super) trait Shape {
    type Out;
    const ARITY: Arity;
    fn read_toml(&self, key: &str, value: &Value) -> Result<Self::Out, ConfigError>;
    /// `texts` is never empty; a single-valued shape takes the last.
    fn read_text(&self, key: &str, texts: &[String]) -> Result<Self::Out, ConfigError>;
    /// `None` = unset (an empty list, an absent optional value).
    fn to_toml(&self, value: &Self::Out) -> Option<Value>;

    fn parse(&self, key: &str, input: &Input<'_>) -> Result<Self::Out, ConfigError> {
        match input {
            Input::Toml(value) => self.read_toml(key, value),
            Input::Text(texts) => self.read_text(key, texts),
        }
    }
}

fn last(texts: &[String]) -> &str {
    texts.last().map(String::as_str).unwrap_or("")
}

/// A value as an error shows it: strings without TOML quoting, everything else as TOML.
fn shown(value: &Value) -> String {
    match value {
        Value::String(text) => text.clone(),
        other => other.to_string(),
    }
}

fn wrong_type(key: &str, value: &Value, expected: &str) -> ConfigError {
    invalid(key, &shown(value), format!("expected {expected}"))
}

fn string(key: &str, value: &Value) -> Result<String, ConfigError> {
    match value {
        Value::String(text) => Ok(text.clone()),
        other => Err(wrong_type(key, other, "a string")),
    }
}

/// A repeatable key in TOML: one string or a list of strings.
fn strings(key: &str, value: &Value) -> Result<Vec<String>, ConfigError> {
    match value {
        Value::String(text) => Ok(vec![text.clone()]),
        Value::Array(items) => items.iter().map(|item| string(key, item)).collect(),
        other => Err(wrong_type(key, other, "a string or a list of strings")),
    }
}

/// `true`/`false`.
pub(super) struct Switch;

impl Shape for Switch {
    type Out = bool;
    const ARITY: Arity = Arity::Switch;
    fn read_toml(&self, key: &str, value: &Value) -> Result<bool, ConfigError> {
        value
            .as_bool()
            .ok_or_else(|| wrong_type(key, value, "true or false"))
    }
    fn read_text(&self, key: &str, texts: &[String]) -> Result<bool, ConfigError> {
        values::boolean(key, last(texts))
    }
    fn to_toml(&self, value: &bool) -> Option<Value> {
        Some(Value::Boolean(*value))
    }
}

/// An unsigned integer of type `T`.
pub(super) struct Int<T>(PhantomData<T>);

pub(super) const fn int<T>() -> Int<T> {
    Int(PhantomData)
}

/// The integer types keys use, with their largest value for error messages.
pub(super) trait Unsigned: Copy + TryFrom<i64> + std::str::FromStr + Into<u64> {
    const MAX_TEXT: &'static str;
}
impl Unsigned for u16 {
    const MAX_TEXT: &'static str = "65535";
}
impl Unsigned for u32 {
    const MAX_TEXT: &'static str = "4294967295";
}
impl Unsigned for u64 {
    const MAX_TEXT: &'static str = "9223372036854775807";
}

impl<T: Unsigned> Shape for Int<T> {
    type Out = T;
    const ARITY: Arity = Arity::One;
    fn read_toml(&self, key: &str, value: &Value) -> Result<T, ConfigError> {
        value
            .as_integer()
            .and_then(|number| T::try_from(number).ok())
            .ok_or_else(|| wrong_type(key, value, &format!("an integer in 0..={}", T::MAX_TEXT)))
    }
    fn read_text(&self, key: &str, texts: &[String]) -> Result<T, ConfigError> {
        let text = last(texts);
        let parsed = text.trim().parse::<T>().ok();
        // Same range as TOML integers (i64), so both sources accept the same values.
        parsed
            .filter(|number| (*number).into() <= i64::MAX as u64)
            .ok_or_else(|| {
                invalid(
                    key,
                    text,
                    format!("expected an integer in 0..={}", T::MAX_TEXT),
                )
            })
    }
    fn to_toml(&self, value: &T) -> Option<Value> {
        i64::try_from((*value).into()).ok().map(Value::Integer)
    }
}

/// An allocation limit: an integer, or a string `N` or `N%` (a share of the relay ports).
pub(super) struct Limit;

impl Shape for Limit {
    type Out = AllocationLimit;
    const ARITY: Arity = Arity::One;
    fn read_toml(&self, key: &str, value: &Value) -> Result<AllocationLimit, ConfigError> {
        match value {
            Value::Integer(_) => int::<u32>()
                .read_toml(key, value)
                .map(AllocationLimit::Count),
            Value::String(text) => values::allocation_limit(key, text),
            other => Err(wrong_type(
                key,
                other,
                "an integer, or a share of the relay ports such as \"25%\"",
            )),
        }
    }
    fn read_text(&self, key: &str, texts: &[String]) -> Result<AllocationLimit, ConfigError> {
        values::allocation_limit(key, last(texts))
    }
    fn to_toml(&self, value: &AllocationLimit) -> Option<Value> {
        Some(match value {
            AllocationLimit::Count(count) => Value::Integer((*count).into()),
            share @ AllocationLimit::PercentOfPorts(_) => Value::String(share.to_string()),
        })
    }
}

/// `usize` counts (threads, bytes): read as `u64`.
pub(super) struct Count;

impl Shape for Count {
    type Out = usize;
    const ARITY: Arity = Arity::One;
    fn read_toml(&self, key: &str, value: &Value) -> Result<usize, ConfigError> {
        let number = int::<u64>().read_toml(key, value)?;
        usize::try_from(number).map_err(|_| wrong_type(key, value, "a smaller integer"))
    }
    fn read_text(&self, key: &str, texts: &[String]) -> Result<usize, ConfigError> {
        let number = int::<u64>().read_text(key, texts)?;
        usize::try_from(number).map_err(|_| invalid(key, last(texts), "expected a smaller integer"))
    }
    fn to_toml(&self, value: &usize) -> Option<Value> {
        i64::try_from(*value).ok().map(Value::Integer)
    }
}

/// How a single text value is parsed and written back.
pub(super) trait Item: Sized {
    fn render(&self) -> String;
}

impl Item for String {
    fn render(&self) -> String {
        self.clone()
    }
}
impl Item for IpAddr {
    fn render(&self) -> String {
        self.to_string()
    }
}
impl Item for SocketAddr {
    fn render(&self) -> String {
        self.to_string()
    }
}
impl Item for PathBuf {
    fn render(&self) -> String {
        self.display().to_string()
    }
}
impl Item for ExternalIp {
    fn render(&self) -> String {
        match self.private {
            Some(private) => format!("{}/{private}", self.public),
            None => self.public.to_string(),
        }
    }
}
impl Item for IpRange {
    fn render(&self) -> String {
        if self.start == self.end {
            self.start.to_string()
        } else {
            format!("{}-{}", self.start, self.end)
        }
    }
}
impl Item for LogFormat {
    fn render(&self) -> String {
        self.as_str().to_string()
    }
}
impl Item for tern_xdp::Mode {
    fn render(&self) -> String {
        self.as_str().to_string()
    }
}
impl Item for Secret {
    fn render(&self) -> String {
        self.0.clone()
    }
}

type Parse<T> = fn(&str, &str) -> Result<T, ConfigError>;

/// One string, parsed by `.0` (key, text).
pub(super) struct Text<T>(pub Parse<T>);

impl<T: Item> Shape for Text<T> {
    type Out = T;
    const ARITY: Arity = Arity::One;
    fn read_toml(&self, key: &str, value: &Value) -> Result<T, ConfigError> {
        (self.0)(key, &string(key, value)?)
    }
    fn read_text(&self, key: &str, texts: &[String]) -> Result<T, ConfigError> {
        (self.0)(key, last(texts))
    }
    fn to_toml(&self, value: &T) -> Option<Value> {
        Some(Value::String(value.render()))
    }
}

/// An optional string: empty means unset, so a later source can switch it off.
pub(super) struct Optional<T>(pub Parse<T>);

impl<T: Item> Shape for Optional<T> {
    type Out = Option<T>;
    const ARITY: Arity = Arity::One;
    fn read_toml(&self, key: &str, value: &Value) -> Result<Option<T>, ConfigError> {
        let text = string(key, value)?;
        self.read_text(key, &[text])
    }
    fn read_text(&self, key: &str, texts: &[String]) -> Result<Option<T>, ConfigError> {
        match last(texts) {
            "" => Ok(None),
            text => (self.0)(key, text).map(Some),
        }
    }
    fn to_toml(&self, value: &Option<T>) -> Option<Value> {
        value.as_ref().map(|value| Value::String(value.render()))
    }
}

/// A repeatable key: a string or a list of strings in TOML, each parsed by `.0`.
pub(super) struct List<T>(pub Parse<T>);

impl<T: Item> Shape for List<T> {
    type Out = Vec<T>;
    const ARITY: Arity = Arity::Many;
    fn read_toml(&self, key: &str, value: &Value) -> Result<Vec<T>, ConfigError> {
        self.read_text(key, &strings(key, value)?)
    }
    fn read_text(&self, key: &str, texts: &[String]) -> Result<Vec<T>, ConfigError> {
        texts.iter().map(|text| (self.0)(key, text)).collect()
    }
    fn to_toml(&self, value: &Vec<T>) -> Option<Value> {
        (!value.is_empty()).then(|| {
            Value::Array(
                value
                    .iter()
                    .map(|item| Value::String(item.render()))
                    .collect(),
            )
        })
    }
}

/// A repeatable secret: like [`List`], but errors never show the value.
pub(super) struct Secrets;

impl Shape for Secrets {
    type Out = Vec<Secret>;
    const ARITY: Arity = Arity::Many;
    fn read_toml(&self, key: &str, value: &Value) -> Result<Vec<Secret>, ConfigError> {
        let redacted = || invalid(key, REDACTED, "expected a string or a list of strings");
        match value {
            Value::String(text) => Ok(vec![Secret(text.clone())]),
            Value::Array(items) => items
                .iter()
                .map(|item| {
                    item.as_str()
                        .map(|s| Secret(s.to_string()))
                        .ok_or_else(redacted)
                })
                .collect(),
            _ => Err(redacted()),
        }
    }
    fn read_text(&self, _key: &str, texts: &[String]) -> Result<Vec<Secret>, ConfigError> {
        Ok(texts.iter().cloned().map(Secret).collect())
    }
    fn to_toml(&self, value: &Vec<Secret>) -> Option<Value> {
        List::<Secret>(|_, text| Ok(Secret(text.to_string()))).to_toml(value)
    }
}

/// The `[users]` table (`name = "password"` / `name = "0x<hex>"`); as text, `NAME:PASSWORD`.
pub(super) struct Users;

impl Shape for Users {
    type Out = Vec<(String, StaticKey)>;
    const ARITY: Arity = Arity::Many;
    fn read_toml(&self, _key: &str, value: &Value) -> Result<Self::Out, ConfigError> {
        let Value::Table(table) = value else {
            return Err(invalid(
                "users",
                REDACTED,
                "expected a table: [users] name = \"password\"",
            ));
        };
        let mut users: Self::Out = table
            .iter()
            .map(|(name, secret)| {
                let Value::String(secret) = secret else {
                    return Err(invalid(
                        &format!("users.{name}"),
                        REDACTED,
                        "expected a string",
                    ));
                };
                Ok((name.clone(), values::static_key(name, secret)?))
            })
            .collect::<Result<_, _>>()?;
        users.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(users)
    }
    fn read_text(&self, _key: &str, texts: &[String]) -> Result<Self::Out, ConfigError> {
        let mut users: Self::Out = texts
            .iter()
            .map(|text| values::user_entry(text))
            .collect::<Result<_, _>>()?;
        // By name, as a TOML table gives them, so every source yields the same order.
        users.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(users)
    }
    fn to_toml(&self, users: &Self::Out) -> Option<Value> {
        (!users.is_empty()).then(|| {
            Value::Table(
                users
                    .iter()
                    .map(|(name, key)| (name.clone(), Value::String(values::render_key(key))))
                    .collect(),
            )
        })
    }
}

/// A coTURN compatibility switch with no effect: read as a switch, then dropped.
pub(super) struct Accepted;

impl Shape for Accepted {
    type Out = bool;
    const ARITY: Arity = Arity::Switch;
    fn read_toml(&self, key: &str, value: &Value) -> Result<bool, ConfigError> {
        Switch.read_toml(key, value)
    }
    fn read_text(&self, key: &str, texts: &[String]) -> Result<bool, ConfigError> {
        Switch.read_text(key, texts)
    }
    fn to_toml(&self, _: &bool) -> Option<Value> {
        None
    }
}
