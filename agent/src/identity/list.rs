//! A list response decoded as it arrives, one item at a time. A real pod is about 5 KB on
//! the wire (managedFields, containers, env, status), so a 200k-pod list is a gigabyte:
//! reading the body whole and then decoding it (what `Api::list` does) peaks at three
//! times that. Here the body is a reader, each item is cut out as raw JSON (a few
//! kilobytes), handed on, and dropped, so memory stays one item whatever the list size;
//! one unreadable item is reported and skipped instead of failing the whole list.

use std::io::Read;

use serde::{
    de::{DeserializeSeed, Error as _, IgnoredAny, MapAccess, SeqAccess, Visitor},
    Deserialize, Deserializer,
};
use serde_json::value::RawValue;

/// What a list response says besides its items.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Page {
    /// The version the list is consistent at: a watch resumes from here.
    pub resource_version: String,
    /// More pages follow (a paged list); empty or absent: this was the last.
    pub continue_token: Option<String>,
    /// Items handed on.
    pub items: u64,
}

/// Why decoding stopped early.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("list response is not a Kubernetes list: {0}")]
    Json(#[from] serde_json::Error),
    /// The receiver of the items went away (the agent is stopping).
    #[error("stopped by the receiver")]
    Stopped,
}

/// Decode one list response from `body`, calling `each` with every item's raw JSON in
/// order; `each` returns false to stop.
pub fn decode(
    body: impl Read,
    mut each: impl FnMut(&RawValue) -> bool,
) -> Result<Page, DecodeError> {
    let mut stopped = false;
    let mut de =
        serde_json::Deserializer::from_reader(std::io::BufReader::with_capacity(64 * 1024, body));
    let page = de.deserialize_map(ListVisitor {
        each: &mut each,
        stopped: &mut stopped,
    });
    match page {
        Err(_) if stopped => Err(DecodeError::Stopped),
        Err(e) => Err(e.into()),
        Ok(p) => {
            de.end()?;
            Ok(p)
        }
    }
}

struct ListVisitor<'a, F> {
    each: &'a mut F,
    stopped: &'a mut bool,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ListMeta {
    resource_version: Option<String>,
    #[serde(rename = "continue")]
    continue_token: Option<String>,
}

impl<'de, F: FnMut(&RawValue) -> bool> Visitor<'de> for ListVisitor<'_, F> {
    type Value = Page;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("an object with `metadata` and `items`")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Page, A::Error> {
        let mut page = Page::default();
        let mut saw_items = false;
        while let Some(key) = map.next_key::<String>()? {
            match key.as_str() {
                "metadata" => {
                    let m: ListMeta = map.next_value()?;
                    page.resource_version = m.resource_version.unwrap_or_default();
                    page.continue_token = m.continue_token.filter(|c| !c.is_empty());
                }
                "items" => {
                    saw_items = true;
                    page.items += map.next_value_seed(Items {
                        each: &mut *self.each,
                        stopped: &mut *self.stopped,
                    })?;
                }
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        if !saw_items {
            return Err(A::Error::missing_field("items"));
        }
        Ok(page)
    }
}

/// The `items` array, visited element by element.
struct Items<'a, F> {
    each: &'a mut F,
    stopped: &'a mut bool,
}

impl<'de, F: FnMut(&RawValue) -> bool> DeserializeSeed<'de> for Items<'_, F> {
    type Value = u64;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<u64, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de, F: FnMut(&RawValue) -> bool> Visitor<'de> for Items<'_, F> {
    type Value = u64;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("an array of objects")
    }

    /// `"items": null` is how the API serves an empty list of some kinds.
    fn visit_unit<E>(self) -> Result<u64, E> {
        Ok(0)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<u64, A::Error> {
        let mut n = 0;
        while let Some(raw) = seq.next_element::<Box<RawValue>>()? {
            n += 1;
            if !(self.each)(&raw) {
                *self.stopped = true;
                return Err(A::Error::custom("stopped"));
            }
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(body: &str) -> (Result<Page, DecodeError>, Vec<String>) {
        let mut seen = Vec::new();
        let page = decode(body.as_bytes(), |raw| {
            seen.push(raw.get().to_owned());
            true
        });
        (page, seen)
    }

    #[test]
    fn items_are_handed_on_one_by_one_with_the_list_version() {
        let body = r#"{"kind":"PodList","apiVersion":"v1","metadata":{"resourceVersion":"42","continue":"abc"},"items":[{"a":1},{"b":[2,{"c":"}"}]}]}"#;
        let (page, seen) = names(body);
        assert_eq!(
            page.unwrap(),
            Page {
                resource_version: "42".into(),
                continue_token: Some("abc".into()),
                items: 2
            }
        );
        assert_eq!(seen, [r#"{"a":1}"#, r#"{"b":[2,{"c":"}"}]}"#]);
    }

    #[test]
    fn metadata_after_items_and_null_items_are_read() {
        let (page, seen) =
            names(r#"{"items":null,"metadata":{"resourceVersion":"7","continue":""}}"#);
        assert_eq!(
            page.unwrap(),
            Page {
                resource_version: "7".into(),
                continue_token: None,
                items: 0
            }
        );
        assert!(seen.is_empty());
    }

    #[test]
    fn a_truncated_or_foreign_body_is_an_error_naming_it() {
        let (page, seen) = names(r#"{"metadata":{"resourceVersion":"1"},"items":[{"a":1},{"b""#);
        assert!(matches!(page, Err(DecodeError::Json(_))));
        assert_eq!(seen.len(), 1, "what arrived before the cut was handed on");
        let (page, _) = names(r#"{"kind":"Status","code":500}"#);
        assert_eq!(
            page.unwrap_err().to_string(),
            "list response is not a Kubernetes list: missing field `items` at line 1 column 28"
        );
        let (page, _) = names(r#"{"items":[]} trailing"#);
        assert!(matches!(page, Err(DecodeError::Json(_))));
    }

    #[test]
    fn the_receiver_can_stop_the_list() {
        let mut n = 0;
        let r = decode(&br#"{"items":[1,2,3]}"#[..], |_| {
            n += 1;
            n < 2
        });
        assert!(matches!(r, Err(DecodeError::Stopped)));
        assert_eq!(n, 2);
    }
}
