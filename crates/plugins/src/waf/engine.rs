//! A rule set compiled for matching: every literal of every rule in one Aho-Corasick automaton,
//! every regex in one set, so that an input costs one pass of each, however many rules there
//! are.

use std::borrow::Cow;
use std::sync::Arc;

use aho_corasick::{AhoCorasick, MatchKind};
use pylon_model::FieldError;
use regex::bytes::{RegexSet, RegexSetBuilder};

/// Where in a request a rule looks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Targets(u8);

impl Targets {
    pub const NONE: Targets = Targets(0);
    pub const PATH: Targets = Targets(1);
    pub const ARG_NAMES: Targets = Targets(1 << 1);
    pub const ARG_VALUES: Targets = Targets(1 << 2);
    pub const HEADERS: Targets = Targets(1 << 3);
    pub const COOKIES: Targets = Targets(1 << 4);
    pub const BODY: Targets = Targets(1 << 5);
    /// The request target as the client sent it, path and query, only lowercased: for rules
    /// on how a request is encoded (`%00`, `%252e`), which decoding hides.
    pub const RAW_URI: Targets = Targets(1 << 6);
    /// Every decoded input; the raw URI only for the rules that name it.
    pub const ALL: Targets = Targets((1 << 6) - 1);
    /// Every decoded input but the path.
    pub const DATA: Targets = Targets(Self::ALL.0 & !Self::PATH.0);

    /// The targets' names, as a configuration writes them.
    pub const NAMES: [(&'static str, Targets); 7] = [
        ("path", Self::PATH),
        ("arg_names", Self::ARG_NAMES),
        ("args", Self::ARG_VALUES),
        ("headers", Self::HEADERS),
        ("cookies", Self::COOKIES),
        ("body", Self::BODY),
        ("raw_uri", Self::RAW_URI),
    ];

    pub fn union(self, other: Targets) -> Targets {
        Targets(self.0 | other.0)
    }

    pub fn contains(self, other: Targets) -> bool {
        self.0 & other.0 == other.0
    }
}

#[derive(Debug, Clone)]
pub(crate) enum Pattern {
    /// Any of these, found anywhere in the input, as written (lowercase: inputs are).
    Literals(Cow<'static, [Cow<'static, str>]>),
    /// A regex. `needs_symbol`: it cannot match an input made of letters, digits and
    /// `._~/-:,@=` only, which then skips it (the shipped rules are written so; a rule of
    /// one's own is always tried).
    Regex {
        text: Cow<'static, str>,
        needs_symbol: bool,
    },
}

/// A rule: the built-in ones are constants, those of the plugin's metadata are parsed.
#[derive(Debug, Clone)]
pub(crate) struct RuleSpec {
    pub id: u32,
    /// What it detects (`sqli`, `xss`, ...), for the log.
    pub class: Cow<'static, str>,
    pub targets: Targets,
    pub pattern: Pattern,
    /// What a match adds to the request's anomaly score.
    pub score: u32,
    pub message: Cow<'static, str>,
    /// A regex also tried on the input as a shell reads it: without the empty quotes,
    /// backslashes and carets that split a command's name (`w''hoami`, `u\name`, `n^e^t`).
    pub command_line: bool,
}

/// Rules compiled for matching.
pub(crate) struct RuleSet {
    rules: Vec<RuleSpec>,
    literals: AhoCorasick,
    /// The rule of each literal of `literals`, by pattern index.
    literal_rules: Vec<usize>,
    /// The regexes that need a symbol, and the others.
    guarded: Regexes,
    always: Regexes,
    /// The regexes also tried on the command-line form.
    command: Regexes,
    /// Where any rule looks.
    targets: Targets,
}

/// Regexes in one set, with the rule of each.
struct Regexes {
    set: RegexSet,
    rules: Vec<usize>,
}

impl Regexes {
    fn compile(regexes: &[(&str, usize)]) -> Result<Self, FieldError> {
        // ASCII classes (`\b`, `\w`, `\s`): the inputs are lowercase text, and a Unicode
        // word boundary would keep the fast automaton from any input that is not ASCII.
        let set = RegexSetBuilder::new(regexes.iter().map(|(text, _)| text))
            .unicode(false)
            .size_limit(64 << 20)
            .dfa_size_limit(16 << 20)
            .build()
            .map_err(|e| FieldError::new("rules", e.to_string()))?;
        let rules = regexes.iter().map(|(_, rule)| *rule).collect();
        Ok(Self { set, rules })
    }

    fn scan(&self, input: &str, target: Targets, hits: &mut Hits, rules: &[RuleSpec]) {
        if self.rules.is_empty() {
            return;
        }
        for found in self.set.matches(input.as_bytes()).iter() {
            hits.add(self.rules[found], target, rules);
        }
    }
}

impl RuleSet {
    /// Compiles `rules`, which are each valid on their own (a regex that compiles alone).
    pub fn compile(rules: Vec<RuleSpec>) -> Result<Self, FieldError> {
        let (mut literals, mut literal_rules) = (Vec::new(), Vec::new());
        let (mut guarded, mut always, mut command) = (Vec::new(), Vec::new(), Vec::new());
        for (index, rule) in rules.iter().enumerate() {
            match &rule.pattern {
                Pattern::Literals(texts) => {
                    for text in texts.iter() {
                        literals.push(text.as_ref());
                        literal_rules.push(index);
                    }
                }
                Pattern::Regex { text, needs_symbol } => {
                    let set = if *needs_symbol {
                        &mut guarded
                    } else {
                        &mut always
                    };
                    set.push((text.as_ref(), index));
                    if rule.command_line {
                        command.push((text.as_ref(), index));
                    }
                }
            }
        }
        let literals = AhoCorasick::builder()
            .match_kind(MatchKind::Standard)
            .build(&literals)
            .map_err(|e| FieldError::new("rules", e.to_string()))?;
        Ok(Self {
            literals,
            literal_rules,
            guarded: Regexes::compile(&guarded)?,
            always: Regexes::compile(&always)?,
            command: Regexes::compile(&command)?,
            targets: rules
                .iter()
                .fold(Targets::NONE, |all, rule| all.union(rule.targets)),
            rules,
        })
    }

    /// Whether any rule looks at `target`: an input no rule looks at need not be read.
    pub fn looks_at(&self, target: Targets) -> bool {
        self.targets.0 & target.0 != 0
    }

    pub fn rules(&self) -> &[RuleSpec] {
        &self.rules
    }

    pub fn position(&self, id: u32) -> Option<usize> {
        self.rules.iter().position(|r| r.id == id)
    }

    /// Adds to `hits` the rules that look at `target` and match `input` (canonical form).
    pub fn scan(&self, input: &str, target: Targets, hits: &mut Hits) {
        for found in self.literals.find_overlapping_iter(input) {
            hits.add(
                self.literal_rules[found.pattern().as_usize()],
                target,
                &self.rules,
            );
        }
        // Most of a benign request is made of these only, and skips the guarded set.
        let plain = input
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._~/-:,@=".contains(&b));
        if !plain {
            self.guarded.scan(input, target, hits, &self.rules);
        }
        self.always.scan(input, target, hits, &self.rules);
        let splits = ["''", "\"\"", "\\", "^"];
        if !self.command.rules.is_empty() && splits.iter().any(|s| input.contains(s)) {
            // A lone quote stays: an apostrophe (`I'd`) is no split.
            let mut command_line = input.to_owned();
            for split in splits {
                command_line = command_line.replace(split, "");
            }
            self.command.scan(&command_line, target, hits, &self.rules);
        }
    }
}

/// The rules a request matched, each once, with where, and the score they add up to.
#[derive(Clone)]
pub(crate) struct Hits {
    pub matched: Vec<(usize, Targets)>,
    pub score: u32,
    /// Rules switched off for this route, by index.
    disabled: Arc<[bool]>,
}

impl Hits {
    pub fn new(disabled: Arc<[bool]>) -> Self {
        Self {
            matched: Vec::new(),
            score: 0,
            disabled,
        }
    }

    fn add(&mut self, rule: usize, target: Targets, rules: &[RuleSpec]) {
        let spec = &rules[rule];
        if !spec.targets.contains(target)
            || self.disabled.get(rule).copied().unwrap_or(false)
            || self.matched.iter().any(|(r, _)| *r == rule)
        {
            return;
        }
        self.matched.push((rule, target));
        self.score = self.score.saturating_add(spec.score);
    }
}
