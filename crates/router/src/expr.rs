//! Evaluating a route's `vars` against a request.
//!
//! [`pylon_model::expr`] has already done everything that can fail or allocate (regexes
//! compiled, numbers and networks parsed), so evaluation is a walk over the tree that asks the
//! request for each variable it meets, and for nothing else.

use std::net::IpAddr;

use pylon_model::expr::{parse_number, Condition, Expr, Group, LogicOp, Node, Test};

use crate::remote_addr;
use crate::RequestView;

pub(crate) fn matches(expr: &Expr, req: &impl RequestView) -> bool {
    group(expr.root(), req)
}

fn group(g: &Group, req: &impl RequestView) -> bool {
    let mut items = g.items.iter().map(|item| node(item, req));
    match g.op {
        LogicOp::And => items.all(|b| b),
        LogicOp::Or => items.any(|b| b),
        LogicOp::NotAnd => !items.all(|b| b),
        LogicOp::NotOr => !items.any(|b| b),
    }
}

fn node(n: &Node, req: &impl RequestView) -> bool {
    match n {
        Node::Condition(c) => condition(c, req) != c.negated,
        Node::Group(g) => group(g, req),
    }
}

fn condition(c: &Condition, req: &impl RequestView) -> bool {
    let var = || req.var(&c.var);
    let number = || var().as_deref().and_then(parse_number);
    match &c.test {
        Test::Eq(operand) => operand.matches(var().as_deref()),
        Test::Ne(operand) => !operand.matches(var().as_deref()),
        Test::Gt(n) => number().is_some_and(|v| v > *n),
        Test::Ge(n) => number().is_some_and(|v| v >= *n),
        Test::Lt(n) => number().is_some_and(|v| v < *n),
        Test::Le(n) => number().is_some_and(|v| v <= *n),
        Test::Regex(re) => var().is_some_and(|v| re.is_match(&v)),
        Test::In(operands) => {
            let value = var();
            operands.iter().any(|o| o.matches(value.as_deref()))
        }
        Test::Has(wanted) => var().is_some_and(|v| v.split(',').any(|item| item.trim() == wanted)),
        Test::IpMatch(nets) => {
            // The client address is at hand as an `IpAddr`: no need to format and re-parse it.
            let ip = if c.var == "remote_addr" {
                Some(req.remote_addr())
            } else {
                var().and_then(|v| v.trim().parse::<IpAddr>().ok())
            };
            ip.is_some_and(|ip| remote_addr::contains(nets, ip))
        }
    }
}

#[cfg(test)]
mod tests {
    use std::borrow::Cow;
    use std::collections::HashMap;

    use serde_json::{json, Value};

    use super::*;

    struct Vars(HashMap<&'static str, &'static str>, IpAddr);

    impl RequestView for Vars {
        fn path(&self) -> &str {
            "/"
        }
        fn host(&self) -> Option<&str> {
            None
        }
        fn method(&self) -> &str {
            "GET"
        }
        fn remote_addr(&self) -> IpAddr {
            self.1
        }
        fn var(&self, name: &str) -> Option<Cow<'_, str>> {
            self.0.get(name).map(|v| Cow::Borrowed(*v))
        }
    }

    fn req(vars: &[(&'static str, &'static str)]) -> Vars {
        Vars(vars.iter().copied().collect(), "10.1.2.3".parse().unwrap())
    }

    fn eval(expr: Value, r: &Vars) -> bool {
        matches(&Expr::parse(&expr).unwrap(), r)
    }

    #[test]
    fn equality_string_and_numeric() {
        let r = req(&[("arg_name", "json"), ("arg_n", "10.0"), ("arg_s", "ten")]);
        assert!(eval(json!([["arg_name", "==", "json"]]), &r));
        assert!(!eval(json!([["arg_name", "==", "JSON"]]), &r));
        assert!(eval(json!([["arg_n", "==", 10]]), &r));
        assert!(
            !eval(json!([["arg_n", "==", "10"]]), &r),
            "a string value compares as a string"
        );
        assert!(!eval(json!([["arg_s", "==", 10]]), &r));
        assert!(!eval(json!([["arg_missing", "==", "x"]]), &r));
        assert!(eval(json!([["arg_missing", "==", null]]), &r));
        assert!(eval(json!([["arg_name", "~=", "xml"]]), &r));
        assert!(!eval(json!([["arg_name", "~=", "json"]]), &r));
        assert!(eval(json!([["arg_missing", "~=", "x"]]), &r));
        assert!(
            eval(json!([["arg_s", "~=", 10]]), &r),
            "not a number is unequal"
        );
        assert!(eval(json!([["arg_missing", "~=", 10]]), &r));
    }

    #[test]
    fn numeric_comparisons() {
        let r = req(&[("arg_n", " 5 "), ("arg_s", "five")]);
        assert!(eval(json!([["arg_n", ">", 4]]), &r));
        assert!(!eval(json!([["arg_n", ">", 5]]), &r));
        assert!(eval(json!([["arg_n", ">=", "5"]]), &r));
        assert!(eval(json!([["arg_n", "<", 5.5]]), &r));
        assert!(!eval(json!([["arg_n", "<", 5]]), &r));
        assert!(eval(json!([["arg_n", "<=", 5]]), &r));
        for op in [">", ">=", "<", "<="] {
            assert!(!eval(json!([["arg_s", op, 0]]), &r), "{op} on a non-number");
            assert!(
                !eval(json!([["arg_missing", op, 0]]), &r),
                "{op} on a missing variable"
            );
        }
    }

    #[test]
    fn regex_match_case_sensitive_and_not() {
        let r = req(&[("http_user_agent", "Mozilla/5.0 (iPhone)")]);
        assert!(eval(json!([["http_user_agent", "~~", "iPhone"]]), &r));
        assert!(!eval(json!([["http_user_agent", "~~", "iphone"]]), &r));
        assert!(eval(json!([["http_user_agent", "~*", "IPHONE"]]), &r));
        assert!(!eval(json!([["http_user_agent", "~~", "^iPhone"]]), &r));
        assert!(!eval(json!([["http_missing", "~~", ".*"]]), &r));
    }

    #[test]
    fn in_has_and_ipmatch() {
        let r = req(&[
            ("arg_env", "beta"),
            ("arg_v", "2"),
            ("http_x_tags", "a, beta ,c"),
            ("http_x_real_ip", "192.168.0.9"),
        ]);
        assert!(eval(json!([["arg_env", "in", ["alpha", "beta"]]]), &r));
        assert!(!eval(json!([["arg_env", "in", ["alpha", "gamma"]]]), &r));
        assert!(eval(json!([["arg_v", "in", [1, 2]]]), &r));
        assert!(!eval(json!([["arg_missing", "in", ["x"]]]), &r));
        assert!(eval(json!([["http_x_tags", "has", "beta"]]), &r));
        assert!(!eval(json!([["http_x_tags", "has", "b"]]), &r));
        assert!(!eval(json!([["arg_missing", "has", "b"]]), &r));
        assert!(eval(json!([["remote_addr", "ipmatch", "10.0.0.0/8"]]), &r));
        assert!(!eval(
            json!([["remote_addr", "ipmatch", ["192.168.0.0/16", "::1"]]]),
            &r
        ));
        assert!(eval(
            json!([["http_x_real_ip", "ipmatch", ["192.168.0.0/16"]]]),
            &r
        ));
        assert!(
            !eval(json!([["arg_env", "ipmatch", ["0.0.0.0/0"]]]), &r),
            "not an IP"
        );
        assert!(!eval(
            json!([["arg_missing", "ipmatch", ["0.0.0.0/0"]]]),
            &r
        ));
    }

    #[test]
    fn negation_inverts_every_operator() {
        let r = req(&[("arg_a", "1")]);
        assert!(!eval(json!([["arg_a", "!", "==", "1"]]), &r));
        assert!(eval(json!([["arg_a", "!", "==", "2"]]), &r));
        assert!(eval(json!([["arg_missing", "!", ">", 0]]), &r));
        assert!(eval(json!([["arg_a", "!", "in", ["2", "3"]]]), &r));
        assert!(!eval(
            json!([["remote_addr", "!", "ipmatch", "10.0.0.0/8"]]),
            &r
        ));
    }

    #[test]
    fn top_level_and_and_nested_logic() {
        let r = req(&[("arg_a", "1"), ("arg_b", "2")]);
        assert!(eval(json!([]), &r));
        assert!(eval(
            json!([["arg_a", "==", "1"], ["arg_b", "==", "2"]]),
            &r
        ));
        assert!(!eval(
            json!([["arg_a", "==", "1"], ["arg_b", "==", "3"]]),
            &r
        ));
        assert!(eval(
            json!(["OR", ["arg_a", "==", "9"], ["arg_b", "==", "2"]]),
            &r
        ));
        assert!(!eval(
            json!(["OR", ["arg_a", "==", "9"], ["arg_b", "==", "9"]]),
            &r
        ));
        assert!(eval(
            json!(["!AND", ["arg_a", "==", "1"], ["arg_b", "==", "9"]]),
            &r
        ));
        assert!(!eval(
            json!(["!AND", ["arg_a", "==", "1"], ["arg_b", "==", "2"]]),
            &r
        ));
        assert!(eval(
            json!(["!OR", ["arg_a", "==", "9"], ["arg_b", "==", "9"]]),
            &r
        ));
        assert!(!eval(
            json!(["!OR", ["arg_a", "==", "1"], ["arg_b", "==", "9"]]),
            &r
        ));
        let nested = json!([
            ["arg_a", "==", "1"],
            [
                "OR",
                ["arg_b", "==", "9"],
                [
                    "AND",
                    ["arg_b", "==", "2"],
                    ["!OR", ["arg_c", "==", "1"], ["arg_d", "==", "1"]]
                ]
            ]
        ]);
        assert!(eval(nested, &r));
        assert!(eval(
            json!([[
                "OR",
                [["arg_a", "==", "1"], ["arg_b", "==", "2"]],
                ["arg_z", "==", "1"]
            ]]),
            &r
        ));
    }
}
