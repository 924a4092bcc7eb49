//! Listing a collection: APISIX's filters (`name`, `label`, `uri`, `filter`) and paging
//! (`page`, `page_size`).
//!
//! Filters apply first and `total` counts what they kept; a page is then cut from that, in
//! creation order. Without both `page` and `page_size` everything is returned, in key order.

use std::sync::Arc;

use pylon_model::Kind;
use pylon_store::Entry;
use regex::Regex;
use serde_json::Value;

use crate::query::Query;
use crate::references::id_text;
use crate::response::Reply;

const PAGE_SIZES: std::ops::RangeInclusive<usize> = 10..=500;

/// What a listing keeps and which page of it is returned.
#[derive(Debug)]
pub(crate) struct Listing {
    /// A regular expression the resource's `name` must match.
    name: Option<Regex>,
    /// A key the resource's `labels` must have.
    label: Option<String>,
    /// A regular expression the route's `uri`, or one of its `uris`, must match.
    uri: Option<Regex>,
    /// Fields that must hold exactly these ids (`filter=service_id%3D1`).
    fields: Vec<(String, String)>,
    page: Option<(usize, usize)>,
}

/// The fields `filter` may name, per kind; others are ignored, as APISIX does.
fn filterable_fields(kind: Kind) -> &'static [&'static str] {
    match kind {
        Kind::Routes | Kind::StreamRoutes => &["service_id", "upstream_id"],
        _ => &[],
    }
}

impl Listing {
    pub fn from_query(kind: Kind, query: &Query) -> Result<Listing, Reply> {
        // An empty value sets no condition, except for `label`: APISIX then keeps only the
        // resources with a label named "" (none, in practice), as its tests show (its
        // documentation says otherwise).
        let given = |name: &str| query.get(name).filter(|v| !v.is_empty());
        let regex = |name: &str| {
            given(name)
                .map(|pattern| {
                    Regex::new(pattern).map_err(|e| {
                        Reply::bad_request(format!("invalid `{name}` expression: {e}"))
                    })
                })
                .transpose()
        };
        let fields = given("filter")
            .map(|filter| {
                Query::parse(filter)
                    .iter()
                    .filter(|(field, _)| {
                        let known = filterable_fields(kind).contains(field);
                        if !known {
                            tracing::debug!("filter on `{field}` is not supported for {kind}");
                        }
                        known
                    })
                    .map(|(field, value)| (field.to_owned(), value.to_owned()))
                    .collect()
            })
            .unwrap_or_default();
        let number = |name: &str| given(name).and_then(|v| v.parse::<i64>().ok());
        let page = match (number("page"), number("page_size")) {
            (Some(page), Some(size)) => {
                let size = usize::try_from(size)
                    .ok()
                    .filter(|size| PAGE_SIZES.contains(size))
                    .ok_or_else(|| Reply::bad_request("page_size must be between 10 and 500"))?;
                // As APISIX: a page below 1 is the first.
                Some((usize::try_from(page).unwrap_or(0).max(1), size))
            }
            _ => None,
        };
        Ok(Listing {
            name: regex("name")?,
            label: query.get("label").map(str::to_owned),
            uri: regex("uri")?,
            fields,
            page,
        })
    }

    /// The kept entries (the requested page of them) and how many were kept in all.
    pub fn select(&self, entries: Vec<Arc<Entry>>) -> (Vec<Arc<Entry>>, usize) {
        let mut kept: Vec<Arc<Entry>> = entries
            .into_iter()
            .filter(|e| self.keeps(&e.value))
            .collect();
        let total = kept.len();
        if let Some((page, size)) = self.page {
            kept.sort_by_key(|e| e.create_revision);
            kept = kept
                .into_iter()
                .skip((page - 1).saturating_mul(size))
                .take(size)
                .collect();
        }
        (kept, total)
    }

    fn keeps(&self, value: &Value) -> bool {
        let text = |field: &str| value.get(field).and_then(Value::as_str);
        let name_ok = self
            .name
            .as_ref()
            .is_none_or(|re| text("name").is_some_and(|n| re.is_match(n)));
        let label_ok = self.label.as_ref().is_none_or(|label| {
            value
                .get("labels")
                .and_then(Value::as_object)
                .is_some_and(|labels| labels.contains_key(label))
        });
        let uri_ok = self.uri.as_ref().is_none_or(|re| {
            text("uri").is_some_and(|u| re.is_match(u))
                || value
                    .get("uris")
                    .and_then(Value::as_array)
                    .is_some_and(|uris| {
                        uris.iter()
                            .filter_map(Value::as_str)
                            .any(|u| re.is_match(u))
                    })
        });
        let fields_ok = self.fields.iter().all(|(field, wanted)| {
            value.get(field).and_then(id_text).as_deref() == Some(wanted.as_str())
        });
        name_ok && label_ok && uri_ok && fields_ok
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pylon_model::Key;
    use serde_json::json;

    fn entries(values: Vec<Value>) -> Vec<Arc<Entry>> {
        values
            .into_iter()
            .enumerate()
            .map(|(i, value)| {
                Arc::new(Entry {
                    key: Key::new(Kind::Routes, format!("{i}")),
                    value,
                    // Created in the reverse of key order.
                    create_revision: 100 - i as u64,
                    mod_revision: 100 - i as u64,
                })
            })
            .collect()
    }

    fn ids(kept: &[Arc<Entry>]) -> Vec<&str> {
        kept.iter().map(|e| e.key.id.as_str()).collect()
    }

    #[test]
    fn filters_by_name_label_uri_and_reference() {
        let all = entries(vec![
            json!({"name": "test-a", "uri": "/foo/1", "labels": {"env": "prod"}, "service_id": 1}),
            json!({"name": "test-b", "uris": ["/bar", "/foo/2"]}),
            json!({"name": "other", "uri": "/foo"}),
            json!({"uri": "/foo"}),
        ]);
        let select = |q: &str| {
            let listing = Listing::from_query(Kind::Routes, &Query::parse(q)).unwrap();
            let (kept, total) = listing.select(all.clone());
            assert_eq!(kept.len(), total);
            ids(&kept).join(",")
        };
        assert_eq!(select("name=test&uri=foo"), "0,1");
        assert_eq!(select("name=&uri=&filter="), "0,1,2,3");
        assert_eq!(select("label=env"), "0");
        assert_eq!(select("label="), "");
        assert_eq!(select("filter=service_id%3D1"), "0");
        assert_eq!(select("filter=nonsense%3D1"), "0,1,2,3");
        assert_eq!(select(""), "0,1,2,3");
    }

    #[test]
    fn pages_in_creation_order_after_filtering() {
        let all = entries((0..25).map(|i| json!({"name": format!("r{i}")})).collect());
        let listing =
            Listing::from_query(Kind::Routes, &Query::parse("page=2&page_size=10")).unwrap();
        let (kept, total) = listing.select(all.clone());
        assert_eq!(total, 25);
        assert_eq!(
            ids(&kept),
            ["14", "13", "12", "11", "10", "9", "8", "7", "6", "5"]
        );
        let listing =
            Listing::from_query(Kind::Routes, &Query::parse("page=3&page_size=10")).unwrap();
        assert_eq!(listing.select(all.clone()).0.len(), 5);
        for first in ["page=0&page_size=10", "page=-1&page_size=10"] {
            let listing = Listing::from_query(Kind::Routes, &Query::parse(first)).unwrap();
            assert_eq!(ids(&listing.select(all.clone()).0)[0], "24", "{first}");
        }
        for size in ["5", "501", "-10"] {
            let query = Query::parse(&format!("page=1&page_size={size}"));
            let err = Listing::from_query(Kind::Routes, &query).unwrap_err();
            assert_eq!(
                err.body.unwrap()["error_msg"],
                "page_size must be between 10 and 500"
            );
        }
    }
}
