//! Adapter setups: which adapters act, and how they combine — AdapterHub's composition blocks
//! (`Stack`, `Fuse`, `Parallel`, `BatchSplit`, `Split`, `Average`) with its nesting rules, and a
//! parser for expressions such as `Fuse(a, b, Stack(c, d))`.

use std::fmt;

/// A composition of named adapters.
#[derive(Debug, Clone, PartialEq)]
pub enum Setup {
    /// One adapter.
    Adapter(String),
    /// Adapters one after another.
    Stack(Vec<Setup>),
    /// AdapterFusion: a learned attention over the children's outputs.
    Fuse(Vec<Setup>),
    /// The batch is replicated, one copy per child (each with its own head).
    Parallel(Vec<Setup>),
    /// Consecutive rows of the batch go to each child (`batch_sizes`, summing to the batch).
    BatchSplit(Vec<Setup>, Vec<usize>),
    /// Consecutive positions of the sequence go to each child (`splits`, summing to its length).
    Split(Vec<Setup>, Vec<usize>),
    /// A weighted average of the children's outputs (weights normalised to sum 1 unless
    /// `normalize_weights=false`).
    Average(Vec<Setup>, Vec<f64>),
}

/// The kind of a setup node, for nesting rules and messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Adapter,
    Stack,
    Fuse,
    Parallel,
    BatchSplit,
    Split,
    Average,
}

impl Setup {
    fn kind(&self) -> Kind {
        match self {
            Self::Adapter(_) => Kind::Adapter,
            Self::Stack(_) => Kind::Stack,
            Self::Fuse(_) => Kind::Fuse,
            Self::Parallel(_) => Kind::Parallel,
            Self::BatchSplit(..) => Kind::BatchSplit,
            Self::Split(..) => Kind::Split,
            Self::Average(..) => Kind::Average,
        }
    }

    /// The children of a block (none for an adapter).
    pub fn children(&self) -> &[Setup] {
        match self {
            Self::Adapter(_) => &[],
            Self::Stack(c) | Self::Fuse(c) | Self::Parallel(c) => c,
            Self::BatchSplit(c, _) | Self::Split(c, _) | Self::Average(c, _) => c,
        }
    }

    /// Every adapter name, left to right.
    pub fn flatten(&self) -> Vec<&str> {
        match self {
            Self::Adapter(name) => vec![name],
            _ => self.children().iter().flat_map(Setup::flatten).collect(),
        }
    }

    /// The first adapter name.
    pub fn first(&self) -> &str {
        match self {
            Self::Adapter(name) => name,
            _ => self.children()[0].first(),
        }
    }

    /// The last adapter name.
    pub fn last(&self) -> &str {
        match self {
            Self::Adapter(name) => name,
            _ => self.children().last().expect("blocks have children").last(),
        }
    }

    /// One adapter.
    pub fn adapter(name: impl Into<String>) -> Self {
        Self::Adapter(name.into())
    }

    /// `Fuse` over the named adapters, in order.
    pub fn fuse<S: Into<String>>(adapters: impl IntoIterator<Item = S>) -> Self {
        Self::Fuse(adapters.into_iter().map(Self::adapter).collect())
    }

    /// `Stack` of the named adapters, bottom first.
    pub fn stack<S: Into<String>>(adapters: impl IntoIterator<Item = S>) -> Self {
        Self::Stack(adapters.into_iter().map(Self::adapter).collect())
    }

    /// The heads a setup predicts with, as AdapterHub picks them: the last adapter's (of a
    /// `Stack`'s last child), one per `Parallel`/`BatchSplit` branch (each branch's last adapter),
    /// a `Fuse`'s own (named like the fusion).
    pub fn heads(&self) -> Vec<String> {
        match self {
            Self::Adapter(name) => vec![name.clone()],
            Self::Stack(children) => children.last().expect("non-empty").heads(),
            Self::Fuse(children) => vec![FusionId::of(children).to_string()],
            Self::Parallel(children) | Self::BatchSplit(children, _) => {
                children.iter().map(|c| c.last().to_string()).collect()
            }
            Self::Split(..) | Self::Average(..) => vec![self.last().to_string()],
        }
    }

    /// Whether a block splits the sequence (`Split`): its children see other positions.
    pub fn splits_positions(&self) -> bool {
        match self {
            Self::Split(..) => true,
            Self::Adapter(_) => false,
            _ => self.children().iter().any(Setup::splits_positions),
        }
    }

    /// Parses a setup expression: a name, or `Block(child, …[, key=value])`.
    pub fn parse(text: &str) -> Result<Self, ParseError> {
        let mut parser = Parser { text, pos: 0 };
        let setup = parser.setup()?;
        parser.skip_space();
        if parser.pos != text.len() {
            return Err(parser.error("unexpected text after the setup"));
        }
        setup.validate(0).map_err(|message| parser.fail(message))?;
        Ok(setup)
    }

    /// AdapterHub's nesting rules: which block may hold which, and nothing below a nested Stack.
    fn validate(&self, level: usize) -> Result<(), String> {
        use Kind::*;
        let allowed: &[Kind] = match self.kind() {
            Adapter => return Ok(()),
            Stack => &[Adapter, Fuse, Split, Parallel, BatchSplit, Average],
            Fuse => &[Adapter, Stack],
            Split => &[Adapter, Split, Stack, BatchSplit, Average],
            Parallel => &[Adapter, Stack, BatchSplit, Average],
            BatchSplit => &[Adapter, Stack, Split, BatchSplit, Average],
            Average => &[Adapter, Stack, Split, BatchSplit],
        };
        if self.children().is_empty() {
            return Err(format!("{:?} needs at least one child", self.kind()));
        }
        for child in self.children() {
            if child.kind() != Adapter && self.kind() == Stack && level >= 1 {
                return Err(format!(
                    "setup too deep: a Stack inside another block cannot hold {:?}",
                    child.kind()
                ));
            }
            if !allowed.contains(&child.kind()) {
                return Err(format!(
                    "cannot nest {:?} inside {:?} (allowed: {})",
                    child.kind(),
                    self.kind(),
                    allowed
                        .iter()
                        .map(|k| if *k == Adapter {
                            "adapter".to_string()
                        } else {
                            format!("{k:?}")
                        })
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
            }
            child.validate(level + 1)?;
        }
        let count = self.children().len();
        let check = |what: &str, n: usize| {
            if n == count {
                Ok(())
            } else {
                Err(format!(
                    "{:?} has {count} children but {n} {what}",
                    self.kind()
                ))
            }
        };
        match self {
            Self::BatchSplit(_, sizes) => check("batch_sizes", sizes.len()),
            Self::Split(_, splits) => check("splits", splits.len()),
            Self::Average(_, weights) => check("weights", weights.len()),
            _ => Ok(()),
        }
    }
}

impl fmt::Display for Setup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Self::Adapter(name) = self {
            return f.write_str(name);
        }
        write!(f, "{:?}(", self.kind())?;
        for (i, child) in self.children().iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{child}")?;
        }
        let list = |v: &[String]| v.join(", ");
        match self {
            Self::BatchSplit(_, s) => write!(
                f,
                ", batch_sizes=[{}]",
                list(&s.iter().map(usize::to_string).collect::<Vec<_>>())
            )?,
            Self::Split(_, s) => write!(
                f,
                ", splits=[{}]",
                list(&s.iter().map(usize::to_string).collect::<Vec<_>>())
            )?,
            Self::Average(_, w) => write!(
                f,
                ", weights=[{}]",
                list(&w.iter().map(f64::to_string).collect::<Vec<_>>())
            )?,
            _ => {}
        }
        f.write_str(")")
    }
}

impl std::str::FromStr for Setup {
    type Err = ParseError;

    fn from_str(text: &str) -> Result<Self, ParseError> {
        Self::parse(text)
    }
}

/// A setup expression that does not parse, or breaks AdapterHub's nesting rules.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("setup `{}`: {message}{}", setup.escape_debug(), column.map(|c| format!(" at column {c}")).unwrap_or_default())]
pub struct ParseError {
    /// The expression.
    pub setup: String,
    /// Where in it (from 1), when one place is wrong.
    pub column: Option<usize>,
    /// What is wrong.
    pub message: String,
}

/// A fusion's identity: the adapters it fuses, in order. AdapterHub names a fusion — in its
/// files' keys, and the head it predicts with — by these names joined with commas (`a,b,c`):
/// [`Display`](fmt::Display) writes that name and `From<&str>` reads it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(from = "String", into = "String")]
pub struct FusionId(Vec<String>);

impl FusionId {
    /// The fusion of `adapters`, in this order.
    pub fn new<S: Into<String>>(adapters: impl IntoIterator<Item = S>) -> Self {
        Self(adapters.into_iter().map(Into::into).collect())
    }

    /// The fusion a `Fuse` block with these children reads: every adapter below it, left to right.
    pub fn of(children: &[Setup]) -> Self {
        Self::new(children.iter().flat_map(Setup::flatten))
    }

    /// Its adapters, in order.
    pub fn adapters(&self) -> &[String] {
        &self.0
    }

    /// The setup that runs it: `Fuse(a, b, c)`.
    pub fn setup(&self) -> Setup {
        Setup::fuse(self.0.iter().cloned())
    }
}

impl fmt::Display for FusionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.join(","))
    }
}

impl PartialEq<str> for FusionId {
    /// Equal to AdapterHub's name of the same fusion, `a,b,c`.
    fn eq(&self, name: &str) -> bool {
        name.split(',')
            .map(str::trim)
            .eq(self.0.iter().map(String::as_str))
    }
}

impl PartialEq<&str> for FusionId {
    fn eq(&self, name: &&str) -> bool {
        self == *name
    }
}

impl From<&str> for FusionId {
    /// AdapterHub's name, `a,b,c`.
    fn from(name: &str) -> Self {
        Self::new(name.split(',').map(str::trim))
    }
}

impl From<String> for FusionId {
    fn from(name: String) -> Self {
        Self::from(name.as_str())
    }
}

impl From<&String> for FusionId {
    fn from(name: &String) -> Self {
        Self::from(name.as_str())
    }
}

impl From<&FusionId> for FusionId {
    fn from(id: &FusionId) -> Self {
        id.clone()
    }
}

impl From<&[&str]> for FusionId {
    fn from(adapters: &[&str]) -> Self {
        Self::new(adapters.iter().copied())
    }
}

impl<const N: usize> From<[&str; N]> for FusionId {
    fn from(adapters: [&str; N]) -> Self {
        Self::new(adapters)
    }
}

impl From<Vec<String>> for FusionId {
    fn from(adapters: Vec<String>) -> Self {
        Self(adapters)
    }
}

impl From<FusionId> for String {
    fn from(id: FusionId) -> Self {
        id.to_string()
    }
}

struct Parser<'a> {
    text: &'a str,
    pos: usize,
}

/// A `key=value` argument of a block.
enum Arg {
    Child(Setup),
    Numbers(String, Vec<f64>),
    Flag(String, bool),
}

impl<'a> Parser<'a> {
    /// What is wrong at the current position.
    fn error(&self, what: &str) -> ParseError {
        ParseError {
            setup: self.text.to_string(),
            column: Some(self.pos + 1),
            message: what.to_string(),
        }
    }

    /// What is wrong with the expression as a whole.
    fn fail(&self, message: String) -> ParseError {
        ParseError {
            setup: self.text.to_string(),
            column: None,
            message,
        }
    }

    fn skip_space(&mut self) {
        while self.text[self.pos..].starts_with(char::is_whitespace) {
            self.pos += 1;
        }
    }

    fn eat(&mut self, c: char) -> bool {
        self.skip_space();
        if self.text[self.pos..].starts_with(c) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn word(&mut self) -> Result<&'a str, ParseError> {
        self.skip_space();
        let text = self.text;
        let start = self.pos;
        let rest = &text[start..];
        let len = rest
            .find(|c: char| !(c.is_alphanumeric() || "_-.".contains(c)))
            .unwrap_or(rest.len());
        if len == 0 {
            return Err(self.error("expected an adapter name or a block"));
        }
        self.pos += len;
        Ok(&text[start..start + len])
    }

    fn setup(&mut self) -> Result<Setup, ParseError> {
        let word = self.word()?.to_string();
        if !self.eat('(') {
            return Ok(Setup::Adapter(word));
        }
        let block = word.as_str();
        if ![
            "Stack",
            "Fuse",
            "Parallel",
            "BatchSplit",
            "Split",
            "Average",
        ]
        .contains(&block)
        {
            return Err(self.fail(format!(
                "unknown block `{block}` (Stack, Fuse, Parallel, BatchSplit, Split, Average)"
            )));
        }
        let mut children = Vec::new();
        let mut numbers: Vec<(String, Vec<f64>)> = Vec::new();
        let mut normalize = true;
        loop {
            match self.arg()? {
                Arg::Child(c) => children.push(c),
                Arg::Numbers(key, values) => numbers.push((key, values)),
                Arg::Flag(key, value) if key == "normalize_weights" && block == "Average" => {
                    normalize = value
                }
                Arg::Flag(key, _) => return Err(self.fail(format!("{block} has no flag `{key}`"))),
            }
            if self.eat(')') {
                break;
            }
            if !self.eat(',') {
                return Err(self.error("expected `,` or `)`"));
            }
        }
        let mut take = |key: &str| {
            numbers
                .iter()
                .position(|(k, _)| k == key)
                .map(|i| numbers.remove(i).1)
        };
        let counts = |key: &str, values: Option<Vec<f64>>| -> Result<Vec<usize>, ParseError> {
            let values = values.ok_or_else(|| self.fail(format!("{block} needs `{key}=[…]`")))?;
            values
                .iter()
                .map(|&v| {
                    if v >= 0.0 && v.fract() == 0.0 {
                        Ok(v as usize)
                    } else {
                        Err(self.fail(format!("{block} `{key}` must hold whole numbers, not {v}")))
                    }
                })
                .collect()
        };
        let setup = match block {
            "Stack" => Setup::Stack(children),
            "Fuse" => Setup::Fuse(children),
            "Parallel" => Setup::Parallel(children),
            "BatchSplit" => {
                let sizes = counts("batch_sizes", take("batch_sizes"))?;
                Setup::BatchSplit(children, sizes)
            }
            "Split" => {
                let splits = counts("splits", take("splits"))?;
                Setup::Split(children, splits)
            }
            _ => {
                let n = children.len();
                let weights = take("weights").unwrap_or_else(|| vec![1.0 / n as f64; n]);
                let sum: f64 = weights.iter().sum();
                let weights = if normalize && sum != 0.0 {
                    weights.iter().map(|w| w / sum).collect()
                } else {
                    weights
                };
                Setup::Average(children, weights)
            }
        };
        if let Some((key, _)) = numbers.first() {
            return Err(self.fail(format!("{block} has no argument `{key}`")));
        }
        Ok(setup)
    }

    fn arg(&mut self) -> Result<Arg, ParseError> {
        let save = self.pos;
        let word = self.word()?.to_string();
        if !self.eat('=') {
            self.pos = save;
            return self.setup().map(Arg::Child);
        }
        self.skip_space();
        if self.eat('[') {
            let mut values = Vec::new();
            if !self.eat(']') {
                loop {
                    let number = self.word()?;
                    let value = number
                        .parse::<f64>()
                        .map_err(|_| self.fail(format!("`{number}` is not a number")))?;
                    values.push(value);
                    if self.eat(']') {
                        break;
                    }
                    if !self.eat(',') {
                        return Err(self.error("expected `,` or `]`"));
                    }
                }
            }
            return Ok(Arg::Numbers(word, values));
        }
        match self.word()? {
            "true" | "True" => Ok(Arg::Flag(word, true)),
            "false" | "False" => Ok(Arg::Flag(word, false)),
            other => Err(self.fail(format!(
                "`{word}={other}`: expected a list `[…]` or true/false"
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(name: &str) -> Setup {
        Setup::Adapter(name.into())
    }

    #[test]
    fn parses_nested_blocks_and_arguments() {
        assert_eq!(
            Setup::parse("Fuse(a, b, Stack(c, d))").unwrap(),
            Setup::Fuse(vec![a("a"), a("b"), Setup::Stack(vec![a("c"), a("d")])])
        );
        assert_eq!(
            Setup::parse(" BatchSplit(a,Stack(b,c), batch_sizes=[2, 3]) ").unwrap(),
            Setup::BatchSplit(vec![a("a"), Setup::Stack(vec![a("b"), a("c")])], vec![2, 3])
        );
        // Weights are normalised to sum 1, as AdapterHub does, unless told not to.
        assert_eq!(
            Setup::parse("Average(a, b, weights=[1, 3])").unwrap(),
            Setup::Average(vec![a("a"), a("b")], vec![0.25, 0.75])
        );
        assert_eq!(
            Setup::parse("Average(a, b, weights=[1, 3], normalize_weights=false)").unwrap(),
            Setup::Average(vec![a("a"), a("b")], vec![1.0, 3.0])
        );
        assert_eq!(
            Setup::parse("Average(a, b)").unwrap(),
            Setup::Average(vec![a("a"), a("b")], vec![0.5, 0.5])
        );
        assert_eq!(Setup::parse("seq-bn_1").unwrap(), a("seq-bn_1"));
        let text = "Stack(a, Fuse(b, c), BatchSplit(d, e, batch_sizes=[1, 2]))";
        assert_eq!(Setup::parse(text).unwrap().to_string(), text);
    }

    #[test]
    fn names_heads_and_fusions_as_adapterhub() {
        let s = Setup::parse("Fuse(a, b, Stack(c, d))").unwrap();
        assert_eq!(s.flatten(), ["a", "b", "c", "d"]);
        assert_eq!(s.heads(), ["a,b,c,d"]);
        assert_eq!((s.first(), s.last()), ("a", "d"));
        let s = Setup::parse("Parallel(a, Stack(b, c))").unwrap();
        assert_eq!(s.heads(), ["a", "c"]);
        assert_eq!(Setup::parse("Stack(a, b)").unwrap().heads(), ["b"]);
    }

    #[test]
    fn malformed_expressions_are_named() {
        for (text, needle) in [
            ("Fuse(a, b", "expected `,` or `)`"),
            ("Fuse(a b)", "expected `,` or `)`"),
            ("Mix(a, b)", "unknown block `Mix`"),
            ("Fuse()", "expected an adapter name"),
            ("a b", "unexpected text"),
            ("BatchSplit(a, b)", "needs `batch_sizes=[…]`"),
            (
                "BatchSplit(a, b, batch_sizes=[1])",
                "2 children but 1 batch_sizes",
            ),
            ("Split(a, b, splits=[1.5, 2])", "whole numbers"),
            (
                "Fuse(a, Parallel(b, c))",
                "cannot nest Parallel inside Fuse",
            ),
            ("Fuse(a, Stack(b, Fuse(c, d)))", "too deep"),
            ("Stack(a, b, weights=[1, 2])", "no argument `weights`"),
            ("Average(a, b, weights=[x])", "`x` is not a number"),
        ] {
            let err = Setup::parse(text).unwrap_err().to_string();
            assert!(err.contains(needle), "{text}: {err}");
        }
    }
}
