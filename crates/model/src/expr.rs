//! A route's `vars`: APISIX's expression language (lua-resty-expr), parsed and checked once.
//!
//! ```json
//! [["arg_name", "==", "json"], ["OR", ["http_x_v", "~~", "^v[0-9]+$"], ["cookie_beta", "!", "==", null]]]
//! ```
//!
//! The top-level array is an AND of its elements. An element is either a condition
//! `[var, op, value]` / `[var, "!", op, value]` or a group `["AND" | "OR" | "!AND" | "!OR", expr, expr, ...]`
//! (an array of arrays is an implicit AND group). Everything that can fail is done here, at
//! parse time: regexes are compiled, numbers and CIDRs parsed, so evaluating a request cannot
//! fail. The original JSON is kept and written back unchanged by `Serialize`.

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;

use ipnet::IpNet;
use regex::{Regex, RegexBuilder};
use schemars::{json_schema, JsonSchema, Schema, SchemaGenerator};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;

use crate::error::FieldError;

/// A parsed `vars` expression: the top-level AND group and the JSON it came from.
///
/// Shared behind an `Arc`: routes are cloned into every compiled snapshot, and a route without
/// `vars` should not pay for the tree's size.
#[derive(Clone)]
pub struct Expr(Arc<Parsed>);

struct Parsed {
    root: Group,
    source: Value,
}

/// Logic over sub-expressions. An empty AND group is true (`vars: []` matches everything).
#[derive(Debug, Clone)]
pub struct Group {
    pub op: LogicOp,
    pub items: Vec<Node>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogicOp {
    And,
    Or,
    /// `!AND`: true unless every item is true.
    NotAnd,
    /// `!OR`: true when no item is true.
    NotOr,
}

#[derive(Debug, Clone)]
pub enum Node {
    Condition(Condition),
    Group(Group),
}

/// `[var, op, value]`, or `[var, "!", op, value]` when `negated`.
#[derive(Debug, Clone)]
pub struct Condition {
    /// The request variable's name, without `$`: `arg_name`, `http_x_api_key`, `remote_addr`.
    pub var: String,
    pub negated: bool,
    pub test: Test,
}

/// What a condition checks of its variable (`None` when the request does not have it).
#[derive(Debug, Clone)]
pub enum Test {
    /// `==`: see [`Operand::matches`].
    Eq(Operand),
    /// `~=`: the negation of `==`, so a missing variable passes.
    Ne(Operand),
    /// `>`, `>=`, `<`, `<=`: the variable is parsed as a number; missing or not a number is false.
    Gt(f64),
    Ge(f64),
    Lt(f64),
    Le(f64),
    /// `~~` (or `~*`, compiled case-insensitive): an unanchored regex search; missing is false.
    Regex(Regex),
    /// `in`: the variable matches one of the operands.
    In(Vec<Operand>),
    /// `has`: one element of the comma-separated variable, trimmed, equals the value.
    Has(String),
    /// `ipmatch`: the variable is an IP address inside one of the networks.
    IpMatch(Vec<IpNet>),
}

/// A right-hand value of `==`, `~=` and `in`.
#[derive(Debug, Clone, PartialEq)]
pub enum Operand {
    Str(String),
    /// Compared numerically: the variable is parsed as a number.
    Num(f64),
    /// JSON `null`: matches a missing variable.
    Null,
}

// === impl Expr ===

impl Expr {
    /// Parses a `vars` array. Error paths are relative to it: `[1][2]`.
    pub fn parse(value: &Value) -> Result<Expr, FieldError> {
        let items = value
            .as_array()
            .ok_or_else(|| FieldError::new("", "`vars` must be an array of conditions"))?;
        let root = match items.first() {
            None => Group {
                op: LogicOp::And,
                items: Vec::new(),
            },
            Some(Value::String(first)) if logic_op(first).is_none() => {
                return Err(FieldError::new(
                    "",
                    "a condition must be wrapped in an outer array: [[\"arg_x\", \"==\", \"1\"]]",
                ));
            }
            Some(_) => match parse_node(value, "")? {
                Node::Group(group) => group,
                // parse_node returns a condition only for an array starting with a variable name,
                // which was rejected above.
                Node::Condition(c) => Group {
                    op: LogicOp::And,
                    items: vec![Node::Condition(c)],
                },
            },
        };
        Ok(Expr(Arc::new(Parsed {
            root,
            source: value.clone(),
        })))
    }

    /// The top-level group: AND of the `vars` array, or the group it spells out.
    pub fn root(&self) -> &Group {
        &self.0.root
    }

    /// The JSON this was parsed from.
    pub fn source(&self) -> &Value {
        &self.0.source
    }
}

impl fmt::Debug for Expr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Expr({})", self.source())
    }
}

/// Two expressions are equal when they were written the same way; the AST is derived from it.
impl PartialEq for Expr {
    fn eq(&self, other: &Self) -> bool {
        self.source() == other.source()
    }
}

impl Serialize for Expr {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.source().serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Expr {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = Value::deserialize(deserializer)?;
        Expr::parse(&value).map_err(serde::de::Error::custom)
    }
}

/// The shapes [`Expr::parse`] accepts. Operands (regexes, numbers, CIDRs) are left to the parser:
/// a value the schema lets through may still be refused, never the other way round.
impl JsonSchema for Expr {
    fn schema_name() -> Cow<'static, str> {
        "Expr".into()
    }

    fn json_schema(generator: &mut SchemaGenerator) -> Schema {
        let node = generator.subschema_for::<ExprNode>();
        json_schema!({
            "description": "APISIX's `vars` (lua-resty-expr): a list of conditions and groups that must all hold, or a single group such as [\"OR\", condition, condition].",
            "type": "array",
            "anyOf": [{"items": node}, group_schema(&node)]
        })
    }
}

/// One element of an [`Expr`]: a condition, a group, or a list of nodes (an AND group). It
/// exists only to name the recursive schema.
struct ExprNode;

impl JsonSchema for ExprNode {
    fn schema_name() -> Cow<'static, str> {
        "ExprNode".into()
    }

    fn json_schema(generator: &mut SchemaGenerator) -> Schema {
        let node = generator.subschema_for::<ExprNode>();
        let var = json_schema!({"type": "string", "minLength": 1});
        // lua-resty-expr lower-cases operators; JSON Schema patterns have no case-insensitive flag.
        let op = json_schema!({
            "type": "string",
            "pattern": "^(==|~=|>=?|<=?|~~|~\\*|[Ii][Nn]|[Hh][Aa][Ss]|[Ii][Pp][Mm][Aa][Tt][Cc][Hh])$"
        });
        json_schema!({
            "description": "A condition [var, op, value], [var, \"!\", op, value] or [var, value] (short for ==); a group [\"AND\" | \"OR\" | \"!AND\" | \"!OR\", node, node, ...]; or a list of nodes that must all hold.",
            "type": "array",
            "anyOf": [
                {
                    "prefixItems": [var, {"type": ["string", "number", "null"]}],
                    "minItems": 2,
                    "maxItems": 2
                },
                {"prefixItems": [var, op], "minItems": 3, "maxItems": 3},
                {"prefixItems": [var, {"const": "!"}, op], "minItems": 4, "maxItems": 4},
                group_schema(&node),
                {"prefixItems": [{"type": "array"}], "items": node}
            ]
        })
    }
}

/// `["AND" | "OR" | "!AND" | "!OR", node, node, ...]`, the operator in any case.
fn group_schema(node: &Schema) -> Schema {
    json_schema!({
        "prefixItems": [{"type": "string", "pattern": "^!?([Aa][Nn][Dd]|[Oo][Rr])$"}],
        "items": node,
        "minItems": 3
    })
}

// === impl Operand ===

impl Operand {
    /// lua-resty-expr's `==`: a string compares as a string, a number numerically (a variable
    /// that is not a number is unequal), `null` equals only a missing variable.
    pub fn matches(&self, var: Option<&str>) -> bool {
        match (self, var) {
            (Operand::Str(s), Some(v)) => s == v,
            (Operand::Num(n), Some(v)) => parse_number(v) == Some(*n),
            (Operand::Null, None) => true,
            _ => false,
        }
    }
}

/// Lua's `tonumber` for decimal input: surrounding whitespace allowed, NaN is not a number.
pub fn parse_number(s: &str) -> Option<f64> {
    s.trim().parse::<f64>().ok().filter(|n| !n.is_nan())
}

// === parsing ===

fn logic_op(name: &str) -> Option<LogicOp> {
    // lua-resty-expr upper-cases the name, so `or` works too.
    const OPS: [(&str, LogicOp); 4] = [
        ("AND", LogicOp::And),
        ("OR", LogicOp::Or),
        ("!AND", LogicOp::NotAnd),
        ("!OR", LogicOp::NotOr),
    ];
    OPS.iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, op)| *op)
}

fn at(path: &str, i: usize) -> String {
    format!("{path}[{i}]")
}

/// One element: a condition, an explicit group, or an array of arrays (implicit AND).
fn parse_node(value: &Value, path: &str) -> Result<Node, FieldError> {
    let items = value.as_array().ok_or_else(|| {
        FieldError::new(
            path,
            format!("expected a condition or a group (an array), got {value}"),
        )
    })?;
    match items.first() {
        None => Err(FieldError::new(
            path,
            "an empty array is neither a condition nor a group",
        )),
        Some(Value::Array(_)) => Ok(Node::Group(Group {
            op: LogicOp::And,
            items: parse_items(items, 0, path)?,
        })),
        Some(Value::String(first)) => match logic_op(first) {
            Some(_) if items.len() < 3 => Err(FieldError::new(
                path,
                format!("`{first}` needs at least two sub-expressions"),
            )),
            Some(op) => Ok(Node::Group(Group {
                op,
                items: parse_items(items, 1, path)?,
            })),
            None => parse_condition(items, path).map(Node::Condition),
        },
        Some(other) => Err(FieldError::new(
            at(path, 0),
            format!("expected a variable name or `AND`/`OR`/`!AND`/`!OR`, got {other}"),
        )),
    }
}

fn parse_items(items: &[Value], skip: usize, path: &str) -> Result<Vec<Node>, FieldError> {
    items
        .iter()
        .enumerate()
        .skip(skip)
        .map(|(i, item)| parse_node(item, &at(path, i)))
        .collect()
}

fn parse_condition(items: &[Value], path: &str) -> Result<Condition, FieldError> {
    // items[0] is a string: parse_node checked it.
    let var = items[0].as_str().unwrap_or_default();
    if var.is_empty() {
        return Err(FieldError::new(at(path, 0), "the variable name is empty"));
    }
    let (negated, op_index) = match items.len() {
        // lua-resty-expr's legacy shorthand: `[var, value]` means `[var, "==", value]`.
        2 => {
            if let Some(op) = items[1].as_str().filter(|s| is_operator(s)) {
                return Err(FieldError::new(
                    path,
                    format!("`{op}` needs a value: [var, \"{op}\", value]"),
                ));
            }
            let operand = operand(&items[1], &at(path, 1), "==")?;
            return Ok(Condition {
                var: var.to_owned(),
                negated: false,
                test: Test::Eq(operand),
            });
        }
        3 => (false, 1),
        4 if items[1].as_str() == Some("!") => (true, 2),
        4 => {
            return Err(FieldError::new(
                at(path, 1),
                format!(
                    "a 4-element condition is [var, \"!\", op, value]; expected `!`, got {}",
                    items[1]
                ),
            ))
        }
        n => {
            return Err(FieldError::new(
                path,
                format!(
                    "a condition is [var, op, value] or [var, \"!\", op, value]; got {n} elements"
                ),
            ))
        }
    };
    let op_path = at(path, op_index);
    let op = items[op_index].as_str().ok_or_else(|| {
        FieldError::new(
            &op_path,
            format!("expected an operator, got {}", items[op_index]),
        )
    })?;
    let value = &items[op_index + 1];
    let value_path = at(path, op_index + 1);
    Ok(Condition {
        var: var.to_owned(),
        negated,
        test: parse_test(op, &op_path, value, &value_path)?,
    })
}

const OPERATORS: [&str; 12] = [
    "==", "~=", ">", ">=", "<", "<=", "~~", "~*", "in", "has", "ipmatch", "!",
];

fn is_operator(s: &str) -> bool {
    OPERATORS.iter().any(|op| op.eq_ignore_ascii_case(s))
}

fn parse_test(op: &str, op_path: &str, value: &Value, path: &str) -> Result<Test, FieldError> {
    // lua-resty-expr lower-cases operators, so `IN` works too.
    Ok(match op.to_ascii_lowercase().as_str() {
        "==" => Test::Eq(operand(value, path, op)?),
        "~=" => Test::Ne(operand(value, path, op)?),
        ">" => Test::Gt(number(value, path, op)?),
        ">=" => Test::Ge(number(value, path, op)?),
        "<" => Test::Lt(number(value, path, op)?),
        "<=" => Test::Le(number(value, path, op)?),
        "~~" => Test::Regex(regex(value, path, op, false)?),
        "~*" => Test::Regex(regex(value, path, op, true)?),
        "in" => {
            let list = value.as_array().ok_or_else(|| {
                FieldError::new(path, format!("`in` needs an array of values, got {value}"))
            })?;
            Test::In(
                list.iter()
                    .enumerate()
                    .map(|(i, v)| operand(v, &at(path, i), op))
                    .collect::<Result<_, _>>()?,
            )
        }
        "has" => Test::Has(match value {
            Value::String(s) => s.clone(),
            Value::Number(n) => n.to_string(),
            other => {
                return Err(FieldError::new(
                    path,
                    format!("`has` needs a string, got {other}"),
                ));
            }
        }),
        "ipmatch" => Test::IpMatch(networks(value, path)?),
        _ => {
            return Err(FieldError::new(
                op_path,
                format!(
                    "unknown operator `{op}` (expected one of ==, ~=, >, >=, <, <=, ~~, ~*, in, has, ipmatch)"
                ),
            ));
        }
    })
}

fn operand(value: &Value, path: &str, op: &str) -> Result<Operand, FieldError> {
    match value {
        Value::String(s) => Ok(Operand::Str(s.clone())),
        Value::Number(n) => n
            .as_f64()
            .map(Operand::Num)
            .ok_or_else(|| FieldError::new(path, format!("`{n}` is not a usable number"))),
        Value::Null => Ok(Operand::Null),
        other => Err(FieldError::new(
            path,
            format!("`{op}` compares with a string, a number or null, got {other}"),
        )),
    }
}

fn number(value: &Value, path: &str, op: &str) -> Result<f64, FieldError> {
    let n = match value {
        Value::Number(n) => n.as_f64(),
        // lua-resty-expr runs `tonumber` on both sides, so "10" is accepted.
        Value::String(s) => parse_number(s),
        _ => None,
    };
    n.ok_or_else(|| FieldError::new(path, format!("`{op}` compares numbers, got {value}")))
}

fn regex(value: &Value, path: &str, op: &str, case_insensitive: bool) -> Result<Regex, FieldError> {
    let pattern = value.as_str().ok_or_else(|| {
        FieldError::new(path, format!("`{op}` needs a regex string, got {value}"))
    })?;
    RegexBuilder::new(pattern)
        .case_insensitive(case_insensitive)
        .build()
        .map_err(|e| FieldError::new(path, format!("regex `{pattern}` does not compile: {e}")))
}

fn networks(value: &Value, path: &str) -> Result<Vec<IpNet>, FieldError> {
    let one = |v: &Value, path: &str| -> Result<IpNet, FieldError> {
        let s = v.as_str().ok_or_else(|| {
            FieldError::new(
                path,
                format!("`ipmatch` needs an IP or CIDR string, got {v}"),
            )
        })?;
        parse_network(s)
            .ok_or_else(|| FieldError::new(path, format!("`{s}` is not an IP address or CIDR")))
    };
    match value {
        Value::Array(list) if list.is_empty() => Err(FieldError::new(
            path,
            "`ipmatch` needs at least one IP or CIDR",
        )),
        Value::Array(list) => list
            .iter()
            .enumerate()
            .map(|(i, v)| one(v, &at(path, i)))
            .collect(),
        v => Ok(vec![one(v, path)?]),
    }
}

/// `10.0.0.0/8`, `::1/128`, or a bare address (a single-host network).
pub fn parse_network(s: &str) -> Option<IpNet> {
    s.parse::<IpNet>()
        .ok()
        .or_else(|| s.parse::<std::net::IpAddr>().ok().map(IpNet::from))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn parse(v: Value) -> Expr {
        Expr::parse(&v).unwrap_or_else(|e| panic!("{v} should parse: {e}"))
    }

    fn error(v: Value) -> String {
        match Expr::parse(&v) {
            Ok(e) => panic!("{v} should not parse, got {e:?}"),
            Err(e) => e.to_string(),
        }
    }

    fn only_condition(e: &Expr) -> &Condition {
        match e.root().items.as_slice() {
            [Node::Condition(c)] => c,
            other => panic!("expected one condition, got {other:?}"),
        }
    }

    #[test]
    fn top_level_array_is_an_and_of_conditions() {
        let e = parse(json!([["arg_name", "==", "json"], ["http_x_v", "~=", 1]]));
        assert_eq!(e.root().op, LogicOp::And);
        let [Node::Condition(a), Node::Condition(b)] = e.root().items.as_slice() else {
            panic!("two conditions expected: {e:?}");
        };
        assert_eq!(a.var, "arg_name");
        assert!(matches!(&a.test, Test::Eq(Operand::Str(s)) if s == "json"));
        assert_eq!(b.var, "http_x_v");
        assert!(matches!(b.test, Test::Ne(Operand::Num(n)) if n == 1.0));
    }

    #[test]
    fn empty_array_is_an_empty_and() {
        let e = parse(json!([]));
        assert_eq!(e.root().op, LogicOp::And);
        assert!(e.root().items.is_empty());
    }

    #[test]
    fn negation_and_every_operator() {
        let e = parse(json!([["arg_x", "!", "~~", "^a"]]));
        let c = only_condition(&e);
        assert!(c.negated);
        assert!(matches!(&c.test, Test::Regex(r) if r.is_match("abc")));

        let ops = [
            json!([["a", ">", 1]]),
            json!([["a", ">=", "2.5"]]),
            json!([["a", "<", -1]]),
            json!([["a", "<=", 0]]),
            json!([["a", "~*", "^ABC$"]]),
            json!([["a", "in", ["x", 2, null]]]),
            json!([["a", "has", "x"]]),
            json!([["a", "ipmatch", ["10.0.0.0/8", "::1"]]]),
            json!([["a", "IN", ["x"]]]),
        ];
        for v in ops {
            parse(v);
        }
        let e = parse(json!([["a", ">=", "2.5"]]));
        assert!(matches!(only_condition(&e).test, Test::Ge(n) if n == 2.5));
        let e = parse(json!([["a", "~*", "^ABC$"]]));
        assert!(matches!(&only_condition(&e).test, Test::Regex(r) if r.is_match("abc")));
        let e = parse(json!([["a", "in", ["x", 2, null]]]));
        assert!(matches!(&only_condition(&e).test,
            Test::In(v) if v == &[Operand::Str("x".into()), Operand::Num(2.0), Operand::Null]));
        let e = parse(json!([["a", "ipmatch", "192.168.1.0/24"]]));
        assert!(matches!(&only_condition(&e).test, Test::IpMatch(n) if n.len() == 1));
    }

    #[test]
    fn legacy_two_element_condition_means_equals() {
        let e = parse(json!([["arg_x", "1"]]));
        assert!(matches!(&only_condition(&e).test, Test::Eq(Operand::Str(s)) if s == "1"));
    }

    #[test]
    fn nested_groups_to_any_depth() {
        let e = parse(json!([
            "OR",
            ["arg_a", "==", "1"],
            [
                "!AND",
                ["arg_b", "==", "2"],
                [
                    "and",
                    ["arg_c", "==", "3"],
                    [["arg_d", "==", "4"], ["arg_e", "==", "5"]]
                ]
            ]
        ]));
        assert_eq!(e.root().op, LogicOp::Or);
        let [Node::Condition(_), Node::Group(not_and)] = e.root().items.as_slice() else {
            panic!("{e:?}");
        };
        assert_eq!(not_and.op, LogicOp::NotAnd);
        let [Node::Condition(_), Node::Group(and)] = not_and.items.as_slice() else {
            panic!("{e:?}");
        };
        assert_eq!(and.op, LogicOp::And);
        let [Node::Condition(_), Node::Group(implicit)] = and.items.as_slice() else {
            panic!("{e:?}");
        };
        assert_eq!(implicit.op, LogicOp::And);
        assert_eq!(implicit.items.len(), 2);
    }

    #[test]
    fn operand_equality_follows_lua_resty_expr() {
        assert!(Operand::Str("a".into()).matches(Some("a")));
        assert!(!Operand::Str("a".into()).matches(None));
        assert!(Operand::Num(10.0).matches(Some("10.0")));
        assert!(!Operand::Num(10.0).matches(Some("ten")));
        assert!(Operand::Null.matches(None));
        assert!(!Operand::Null.matches(Some("")));
    }

    #[test]
    fn errors_name_the_element_and_the_problem() {
        assert_eq!(
            error(json!([["arg_x", "=~", "a"]]))
                .split(" (")
                .next()
                .unwrap(),
            "[0][1]: unknown operator `=~`"
        );
        assert_eq!(
            error(json!([
                ["a", "==", "1"],
                ["OR", ["b", "==", 1], ["c", "!", "eq", 1]]
            ]))
            .split(" (")
            .next()
            .unwrap(),
            "[1][2][2]: unknown operator `eq`"
        );
        let e = error(json!([["a", "~~", "(unclosed"]]));
        assert!(
            e.starts_with("[0][2]: regex `(unclosed` does not compile: "),
            "{e}"
        );
        assert!(e.contains("unclosed group"), "{e}");
        assert_eq!(
            error(json!([["a", "in", "x"]])),
            "[0][2]: `in` needs an array of values, got \"x\""
        );
        assert_eq!(
            error(json!([["a", "==", "1", "2", "3"]])),
            "[0]: a condition is [var, op, value] or [var, \"!\", op, value]; got 5 elements"
        );
        assert_eq!(
            error(json!([["a"]])),
            "[0]: a condition is [var, op, value] or [var, \"!\", op, value]; got 1 elements"
        );
        assert_eq!(
            error(json!([["a", "in"]])),
            "[0]: `in` needs a value: [var, \"in\", value]"
        );
        assert!(
            error(json!([["a", "not", "==", "1"]])).starts_with("[0][1]: a 4-element condition")
        );
        assert_eq!(
            error(json!([["a", ">", "x"]])),
            "[0][2]: `>` compares numbers, got \"x\""
        );
        assert_eq!(
            error(json!([["a", "ipmatch", ["10.0.0.0/33"]]])),
            "[0][2][0]: `10.0.0.0/33` is not an IP address or CIDR"
        );
        assert_eq!(
            error(json!([["OR", ["a", "==", "1"]]])),
            "[0]: `OR` needs at least two sub-expressions"
        );
        assert_eq!(
            error(json!([[]])),
            "[0]: an empty array is neither a condition nor a group"
        );
        assert_eq!(
            error(json!([[1, "==", 1]])),
            "[0][0]: expected a variable name or `AND`/`OR`/`!AND`/`!OR`, got 1"
        );
        assert_eq!(
            error(json!([["", "==", 1]])),
            "[0][0]: the variable name is empty"
        );
        assert_eq!(
            error(json!([["a", "==", true]])),
            "[0][2]: `==` compares with a string, a number or null, got true"
        );
        assert!(error(json!(["arg_x", "==", "1"])).contains("wrapped in an outer array"));
        assert_eq!(
            error(json!({"a": 1})),
            "`vars` must be an array of conditions"
        );
    }

    #[test]
    fn serde_round_trips_the_original_json() {
        let src = r#"[["arg_name","==","json"],["OR",["http_x_v","~=",1],["cookie_sid","!","in",["a","b"]]]]"#;
        let e: Expr = serde_json::from_str(src).unwrap();
        assert_eq!(serde_json::to_string(&e).unwrap(), src);
        assert_eq!(e, Expr::parse(&serde_json::from_str(src).unwrap()).unwrap());
    }

    #[test]
    fn deserialize_error_carries_the_path() {
        let err =
            serde_json::from_str::<Expr>(r#"[["arg_x","==","1"],["a","=~","b"]]"#).unwrap_err();
        assert!(
            err.to_string().starts_with("[1][1]: unknown operator `=~`"),
            "{err}"
        );
    }
}
