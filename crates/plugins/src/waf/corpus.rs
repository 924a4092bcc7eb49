//! The shipped rules against the corpora in `tests/waf-corpus` (see its `PROVENANCE.md`):
//! attacks of each class, and benign API traffic. Each request goes through the plugin as the
//! gateway takes it: its head in `rewrite`, then its body, cut into small pieces so that
//! payloads fall across reads. The figures are printed (`--nocapture`) and held to the goals.

use serde_json::{json, Value};

use super::*;
use crate::testing::TestRequest;

/// A read size that splits almost every payload.
const PIECE: usize = 7;

/// The rules the corpus request `line` matches (by id) when the plugin refuses it; empty
/// when it passes.
fn refused_by(waf: &Waf, line: &Value) -> Vec<u32> {
    let mut request = TestRequest::get(line["uri"].as_str().unwrap())
        .method(line["method"].as_str().unwrap_or("GET"));
    for (name, value) in line["headers"].as_object().into_iter().flatten() {
        request = request.header(name, value.as_str().unwrap());
    }
    let mut ctx = RequestCtx::new(&request, "corpus", None);
    let ids = |hits: &Hits| -> Vec<u32> {
        let rules = waf.0.rules.rules();
        hits.matched.iter().map(|&(r, _)| rules[r].id).collect()
    };
    if matches!(waf.rewrite(&mut ctx), Step::Reply(_)) {
        return ids(&waf.0.inspect(&ctx));
    }
    let body = line["body"].as_str().unwrap_or_default().as_bytes();
    let Some(mut inspector) = waf.request_body(&ctx) else {
        return Vec::new();
    };
    let refused = body
        .chunks(PIECE)
        .any(|piece| inspector.inspect(piece).is_some())
        || inspector.finish(true).is_some();
    if !refused {
        return Vec::new();
    }
    // The same body again, whole, for the rules' ids.
    let content_type = line["headers"]["Content-Type"].as_str();
    let mut scanner = BodyScanner::new(BodyKind::of(content_type));
    let mut hits = Hits::new(waf.0.disabled.clone());
    scanner.feed(body, &waf.0.rules, &mut hits);
    scanner.finish(&waf.0.rules, &mut hits);
    let mut all = ids(&waf.0.inspect(&ctx));
    all.extend(ids(&hits));
    all
}

fn lines(text: &str) -> impl Iterator<Item = Value> + '_ {
    text.lines()
        .map(|l| serde_json::from_str(l).expect("a corpus line is JSON"))
}

#[test]
fn the_shipped_rules_block_the_attacks_and_pass_the_benign_requests() {
    // The plugin with its defaults, built as the gateway builds it.
    let credentials = Arc::new(crate::credentials::Credentials::default());
    let env = BuildEnv {
        protos: crate::protos::Protos::none(),
        credentials: &credentials,
        metadata: None,
        owner: "",
    };
    let waf = Waf(Arc::new(settings(&json!({}), &env).unwrap()));
    let mut by_class: Vec<(String, usize, usize)> = Vec::new();
    let mut missed = Vec::new();
    for line in lines(include_str!("../../tests/waf-corpus/attacks.jsonl")) {
        let class = line["class"].as_str().unwrap().to_owned();
        let blocked = !refused_by(&waf, &line).is_empty();
        if !blocked {
            missed.push(line.to_string());
        }
        match by_class.iter_mut().find(|(c, _, _)| *c == class) {
            Some((_, total, hit)) => {
                *total += 1;
                *hit += usize::from(blocked);
            }
            None => by_class.push((class, 1, usize::from(blocked))),
        }
    }
    let (mut benign, mut false_positives) = (0, Vec::new());
    for line in lines(include_str!("../../tests/waf-corpus/benign.jsonl")) {
        benign += 1;
        let rules = refused_by(&waf, &line);
        if !rules.is_empty() {
            false_positives.push(format!("(rules {rules:?}) {line}"));
        }
    }

    let (total, hit) = by_class
        .iter()
        .fold((0, 0), |(t, h), (_, total, hit)| (t + total, h + hit));
    for (class, total, hit) in &by_class {
        println!(
            "waf corpus: {class:10} {hit:4} of {total:4} blocked ({:.1} %)",
            pct(*hit, *total)
        );
    }
    println!(
        "waf corpus: attacks    {hit:4} of {total:4} blocked ({:.1} %)",
        pct(hit, total)
    );
    println!(
        "waf corpus: benign     {:4} of {benign:4} refused ({:.2} %)",
        false_positives.len(),
        pct(false_positives.len(), benign)
    );
    for line in missed.iter().take(20) {
        println!("missed: {line}");
    }
    for line in false_positives.iter().take(20) {
        println!("false positive: {line}");
    }
    assert!(pct(hit, total) >= 95.0, "{hit} of {total} attacks blocked");
    for (class, total, hit) in &by_class {
        assert!(
            pct(*hit, *total) >= 90.0,
            "{class}: {hit} of {total} blocked"
        );
    }
    assert!(
        pct(false_positives.len(), benign) <= 0.1,
        "{} of {benign} benign requests refused",
        false_positives.len()
    );
}

fn pct(part: usize, whole: usize) -> f64 {
    part as f64 * 100.0 / whole as f64
}
