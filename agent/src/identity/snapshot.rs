//! Offline identity: a file exactly as `kubectl get pods,namespaces,nodes,services -A -o yaml`
//! prints it (a `List`), parsed into the same k8s-openapi types the API watch yields.

use std::path::Path;

use k8s_openapi::api::core::v1::{Namespace, Node, Pod, Service};
use serde::de::{
    DeserializeOwned, DeserializeSeed, Deserializer, Error as _, IgnoredAny, MapAccess, SeqAccess,
    Visitor,
};
use serde_json::Value;

use super::{IdentityError, NamespaceMeta, NodeMeta, Object, PodMeta, ServiceMeta};

/// Largest snapshot read: about 250k objects as `kubectl -o yaml` prints them.
const MAX_BYTES: u64 = 512 << 20;
const TOO_BIG: &str =
    "a cluster this large should use the Kubernetes API watch (no identity.snapshot)";

/// Read a snapshot file into objects; the first bad object fails the whole file, so a
/// half-read inventory never silently replaces a whole one.
pub fn load(path: &Path) -> Result<Vec<Object>, IdentityError> {
    let file = path.display().to_string();
    // The parser below refuses aliases and duplicate keys itself, without the whole-file
    // pass (which held the document's every event: twelve times the file).
    let text = crate::input::read(path, MAX_BYTES, TOO_BIG).map_err(|e| {
        let fix = match e {
            crate::input::InputError::Open(_) => format!(
                "; write it with `kubectl get pods,namespaces,nodes,services -A -o yaml > {file}`"
            ),
            _ => String::new(),
        };
        IdentityError::Snapshot {
            file: file.clone(),
            message: format!("{e}{fix}"),
        }
    })?;
    parse(&text).map_err(|e| match e {
        IdentityError::Object {
            object,
            field,
            message,
        } => IdentityError::Object {
            object: format!("{file}: {object}"),
            field,
            message,
        },
        IdentityError::Snapshot { message, .. } | IdentityError::Unreadable { message, .. } => {
            IdentityError::Snapshot { file, message }
        }
    })
}

/// Parse a snapshot's text. Items are decoded one at a time as the parser reaches them
/// (`Items`), from a parser that builds no tree: only one item is ever held as a generic
/// value, so memory follows the file and what the store keeps, not the file's size times
/// the cost of a YAML tree (47 times the file when the whole document was one tree).
pub fn parse(text: &str) -> Result<Vec<Object>, IdentityError> {
    let snapshot = |message: String| IdentityError::Snapshot {
        file: "<snapshot>".into(),
        message,
    };
    let mut failure = None;
    let top = serde_saphyr::with_deserializer_from_str_with_options(text, options(), |d| {
        Top {
            failure: &mut failure,
        }
        .deserialize(d)
    });
    if let Some(e) = failure {
        return Err(e);
    }
    let top = top.map_err(|e| snapshot(not_yaml(&e)))?;
    let kind = top
        .rest
        .get("kind")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_owned();
    let objects = match kind.as_str() {
        "List" => top
            .items
            .ok_or_else(|| snapshot("kind List without an `items` array".into()))?,
        "Pod" | "Namespace" | "Node" | "Service" => {
            vec![object(0, Value::Object(top.rest))?]
        }
        "" => {
            return Err(snapshot(
                "has no `kind`: expected the `kind: List` that `kubectl get … -o yaml` prints"
                    .into(),
            ))
        }
        other => {
            return Err(snapshot(format!(
                "kind {other:?} is not supported: expected List (of Pod, Namespace, Node, Service)"
            )))
        }
    };
    no_duplicates(&objects)?;
    Ok(objects)
}

/// A parser that never builds the document as a tree (serde_norway first loads every event
/// of the document, about twelve times the file). Its budgets stand in for the size and
/// shape checks this file already passed (`input::read_yaml`): a 512 MiB snapshot has
/// tens of millions of nodes and events.
/// Aliases (which can make a small file stand for gigabytes, and kubectl never writes) and
/// duplicate keys (the later would silently win) are refused as they are met.
fn options() -> serde_saphyr::Options {
    let mut budget = serde_saphyr::Budget::default();
    budget.max_events = usize::MAX;
    budget.max_nodes = usize::MAX;
    budget.max_total_scalar_bytes = usize::MAX;
    budget.max_aliases = 0;
    let mut options = serde_saphyr::Options::default();
    options.budget = Some(budget);
    options.duplicate_keys = serde_saphyr::DuplicateKeyPolicy::Error;
    // Errors as values to match on, not rendered source snippets.
    options.with_snippet = false;
    options
}

/// What the parser found wrong, said as the other inputs say it.
fn not_yaml(e: &serde_saphyr::Error) -> String {
    let at = |l: &serde_saphyr::Location| format!(" (line {}, column {})", l.line(), l.column());
    match e {
        serde_saphyr::Error::Budget {
            breach: serde_saphyr::budget::BudgetBreach::Aliases { .. },
            location,
        } => format!(
            "it uses a YAML alias{}: aliases (*name) repeating parts of it are not accepted; write the content out (kubectl never uses aliases)",
            at(location)
        ),
        serde_saphyr::Error::DuplicateMappingKey { key, location } => format!(
            "key {} appears twice in one mapping{}: keep one (the later would silently win)",
            key.as_deref().map_or("<complex>".into(), |k| format!("{k:?}")),
            at(location)
        ),
        other => format!("is not YAML ({other})"),
    }
}

/// The document: `items` decoded as they come, everything else kept (a List has only
/// `apiVersion`, `kind` and `metadata` besides; a single object is small).
#[derive(Default)]
struct Parts {
    rest: serde_json::Map<String, Value>,
    /// None: no `items`, or not an array.
    items: Option<Vec<Object>>,
}

/// A scalar where a visitor wants a mapping or a sequence: not this shape, so the
/// visitor's default value (no kind, no items array), judged by the caller.
macro_rules! not_this_shape {
    () => {
        fn visit_unit<E>(self) -> Result<Self::Value, E> {
            Ok(Default::default())
        }
        fn visit_none<E>(self) -> Result<Self::Value, E> {
            Ok(Default::default())
        }
        fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
            Ok(Default::default())
        }
        fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
            Ok(Default::default())
        }
        fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
            Ok(Default::default())
        }
        fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
            Ok(Default::default())
        }
        fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
            Ok(Default::default())
        }
    };
}

/// The first bad object, carried out of the parser (which only knows its own errors).
struct Top<'a> {
    failure: &'a mut Option<IdentityError>,
}

impl<'de> DeserializeSeed<'de> for Top<'_> {
    type Value = Parts;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Parts, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Top<'_> {
    type Value = Parts;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a kubectl List")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Parts, A::Error> {
        let mut parts = Parts::default();
        while let Some(key) = map.next_key::<String>()? {
            if key == "items" {
                parts.items = map.next_value_seed(Items {
                    failure: &mut *self.failure,
                })?;
            } else {
                let v: Value = map.next_value()?;
                parts.rest.insert(key, v);
            }
        }
        Ok(parts)
    }

    // Anything but a mapping has no `kind`.
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Parts, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Parts::default())
    }
    not_this_shape!();
}

/// `items`, decoded and checked one at a time; not an array: None.
struct Items<'a> {
    failure: &'a mut Option<IdentityError>,
}

impl<'de> DeserializeSeed<'de> for Items<'_> {
    type Value = Option<Vec<Object>>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Items<'_> {
    type Value = Option<Vec<Object>>;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("an array of objects")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut out = Vec::new();
        while let Some(item) = seq.next_element::<Value>()? {
            match object(out.len(), item) {
                Ok(o) => out.push(o),
                Err(e) => {
                    *self.failure = Some(e);
                    return Err(A::Error::custom("bad object"));
                }
            }
        }
        Ok(Some(out))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(None)
    }
    not_this_shape!();
}

/// The API never lists one object twice; a file that does was concatenated or edited, and
/// which copy is right cannot be known.
fn no_duplicates(objects: &[Object]) -> Result<(), IdentityError> {
    let mut seen = std::collections::HashMap::new();
    for (i, o) in objects.iter().enumerate() {
        let (kind, ns, name) = match o {
            Object::Pod(p) => ("Pod", &*p.namespace, &*p.name),
            Object::Namespace(n) => ("Namespace", "", &*n.name),
            Object::Node(n) => ("Node", "", &*n.name),
            Object::Service(v) => ("Service", &*v.namespace, &*v.name),
        };
        if let Some(first) = seen.insert((kind, ns, name), i) {
            let full = if ns.is_empty() {
                name.to_owned()
            } else {
                format!("{ns}/{name}")
            };
            return Err(IdentityError::Object {
                object: format!("items[{i}] ({kind} {full})"),
                field: "metadata.name".into(),
                message: format!(
                    "the same {kind} as items[{first}]: each object once (export the file again with kubectl)"
                ),
            });
        }
    }
    Ok(())
}

fn object(i: usize, item: Value) -> Result<Object, IdentityError> {
    let kind = item
        .get("kind")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_owned();
    let name = item
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("<unnamed>")
        .to_owned();
    let label = format!(
        "items[{i}] ({} {name})",
        if kind.is_empty() { "<no kind>" } else { &kind }
    );
    let typed = |e: IdentityError| match e {
        IdentityError::Object { field, message, .. } => IdentityError::Object {
            object: label.clone(),
            field,
            message,
        },
        other => other,
    };
    match kind.as_str() {
        "Pod" => Ok(Object::Pod(PodMeta::try_from(&decode::<Pod>(item).map_err(typed)?).map_err(typed)?)),
        "Namespace" => Ok(Object::Namespace(
            NamespaceMeta::try_from(&decode::<Namespace>(item).map_err(typed)?).map_err(typed)?,
        )),
        "Node" => Ok(Object::Node(NodeMeta::try_from(&decode::<Node>(item).map_err(typed)?).map_err(typed)?)),
        "Service" => Ok(Object::Service(
            ServiceMeta::try_from(&decode::<Service>(item).map_err(typed)?).map_err(typed)?,
        )),
        "" => Err(IdentityError::Object {
            object: label,
            field: "kind".into(),
            message: "is missing".into(),
        }),
        other => Err(IdentityError::Object {
            object: label,
            field: "kind".into(),
            message: format!(
                "{other:?} is not one of Pod, Namespace, Node, Service: export only `pods,namespaces,nodes,services`"
            ),
        }),
    }
}

fn decode<T: DeserializeOwned>(item: Value) -> Result<T, IdentityError> {
    serde_path_to_error::deserialize(item).map_err(|e| IdentityError::Object {
        object: String::new(),
        field: e.path().to_string(),
        message: e.inner().to_string(),
    })
}
