//! Two things YAML loading does silently, checked in one pass before the real parse:
//! aliases expand (a 200 KB file of anchors stood for 20,000 pods and 4 GB), and of two
//! equal mapping keys the later wins (`node_ports: {22: a, 22: b}`). The pass keeps only a
//! counter and the keys of the mapping being read.

use std::{cell::RefCell, collections::HashSet, fmt};

use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ShapeError {
    #[error(
        "it expands to more than {limit} values{at}: YAML aliases (*name) repeating parts of \
         it are not accepted; write the content out (kubectl never uses aliases)"
    )]
    Expands { limit: usize, at: At },
    #[error("key {key} appears twice in one mapping{at}: keep one (the later would silently win)")]
    DuplicateKey { key: String, at: At },
}

/// Where in the file, when the parser knows.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct At(Option<(usize, usize)>);

impl fmt::Display for At {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some((line, col)) => write!(f, " (line {line}, column {col})"),
            None => Ok(()),
        }
    }
}

/// Every value a document of `text.len()` bytes can hold without aliases fits in this many.
fn limit(text: &str) -> usize {
    text.len() + 64
}

/// Check `text` (one or more YAML documents). Syntax errors are left to the real parser,
/// whose messages name the field.
pub fn check(text: &str) -> Result<(), ShapeError> {
    let state = State {
        left: RefCell::new(limit(text)),
        found: RefCell::new(None),
        limit: limit(text),
    };
    for doc in serde_norway::Deserializer::from_str(text) {
        let result = Node(&state).deserialize(doc);
        if let Some(mut found) = state.found.borrow_mut().take() {
            let at = At(result
                .err()
                .and_then(|e| e.location())
                .map(|l| (l.line(), l.column())));
            match &mut found {
                ShapeError::Expands { at: a, .. } | ShapeError::DuplicateKey { at: a, .. } => {
                    *a = at
                }
            }
            return Err(found);
        }
        if result.is_err() {
            return Ok(());
        }
    }
    Ok(())
}

struct State {
    left: RefCell<usize>,
    found: RefCell<Option<ShapeError>>,
    limit: usize,
}

impl State {
    fn spend<E: de::Error>(&self) -> Result<(), E> {
        let mut left = self.left.borrow_mut();
        if *left == 0 {
            *self.found.borrow_mut() = Some(ShapeError::Expands {
                limit: self.limit,
                at: At::default(),
            });
            return Err(E::custom("expands"));
        }
        *left -= 1;
        Ok(())
    }
}

/// One value; also what a mapping key is read as (its text, for the duplicate check).
struct Node<'a>(&'a State);

impl<'de> DeserializeSeed<'de> for Node<'_> {
    type Value = Key;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Key, D::Error> {
        d.deserialize_any(self)
    }
}

/// A scalar's text (mapping keys are compared by it); collections have none.
#[derive(PartialEq, Eq, Hash)]
pub struct Key(Option<String>);

impl<'de> Visitor<'de> for Node<'_> {
    type Value = Key;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any YAML value")
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Key, E> {
        self.0.spend()?;
        Ok(Key(Some(v.to_string())))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Key, E> {
        self.0.spend()?;
        Ok(Key(Some(v.to_string())))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Key, E> {
        self.0.spend()?;
        Ok(Key(Some(v.to_string())))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Key, E> {
        self.0.spend()?;
        Ok(Key(Some(v.to_string())))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Key, E> {
        self.0.spend()?;
        Ok(Key(Some(v.to_owned())))
    }
    fn visit_unit<E: de::Error>(self) -> Result<Key, E> {
        self.0.spend()?;
        Ok(Key(Some("null".into())))
    }
    fn visit_none<E: de::Error>(self) -> Result<Key, E> {
        self.visit_unit()
    }
    fn visit_some<D: de::Deserializer<'de>>(self, d: D) -> Result<Key, D::Error> {
        d.deserialize_any(self)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Key, A::Error> {
        self.0.spend()?;
        while seq.next_element_seed(Node(self.0))?.is_some() {}
        Ok(Key(None))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Key, A::Error> {
        self.0.spend()?;
        let mut keys = HashSet::new();
        while let Some(key) = map.next_key_seed(Node(self.0))? {
            if let Key(Some(k)) = &key {
                if keys.contains(k) {
                    *self.0.found.borrow_mut() = Some(ShapeError::DuplicateKey {
                        key: format!("{k:?}"),
                        at: At::default(),
                    });
                    return Err(de::Error::custom("duplicate key"));
                }
                keys.insert(k.clone());
            }
            map.next_value_seed(Node(self.0))?;
        }
        Ok(Key(None))
    }
    fn visit_enum<A: de::EnumAccess<'de>>(self, data: A) -> Result<Key, A::Error> {
        // A tagged value (`!Tag x`): its content counts like any other.
        let (_, v) = data.variant_seed(Node(self.0))?;
        de::VariantAccess::newtype_variant_seed(v, Node(self.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_documents_pass() {
        check("a: 1\nb: [x, y, {c: d}]\n---\ne: f\n").unwrap();
        check("").unwrap();
    }

    #[test]
    fn syntax_errors_are_left_to_the_parser() {
        check("a: [1, 2\n").unwrap();
    }

    #[test]
    fn a_duplicate_key_is_named_with_its_place() {
        let e = check("sensitive:\n  node_ports: {22: a, 22: b}\n").unwrap_err();
        assert_eq!(
            e.to_string(),
            "key \"22\" appears twice in one mapping (line 2, column 15): keep one (the later would silently win)"
        );
    }

    #[test]
    fn equal_keys_in_different_mappings_are_fine() {
        check("a: {x: 1}\nb: {x: 2}\n").unwrap();
    }

    #[test]
    fn aliases_that_expand_beyond_the_files_size_are_refused() {
        // Each level doubles: 2^12 copies of a 10-value list from a few hundred bytes.
        let mut y = String::from("a0: &a0 [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]\n");
        for i in 1..=12 {
            y.push_str(&format!("a{i}: &a{i} [*a{p}, *a{p}]\n", p = i - 1));
        }
        let e = check(&y).unwrap_err();
        assert!(
            matches!(e, ShapeError::Expands { limit, .. } if limit == y.len() + 64),
            "{e}"
        );
    }

    #[test]
    fn a_few_small_aliases_are_within_bounds() {
        check("base: &b {x: 1}\nuse: *b\nagain: *b\n").unwrap();
    }
}
