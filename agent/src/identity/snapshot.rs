//! Offline identity: a file exactly as `kubectl get pods,namespaces,nodes,services -A -o yaml`
//! prints it (a `List`), parsed into the same k8s-openapi types the API watch yields.

use std::path::Path;

use k8s_openapi::api::core::v1::{Namespace, Node, Pod, Service};
use serde::de::DeserializeOwned;
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
    let text = crate::input::read_yaml(path, MAX_BYTES, TOO_BIG).map_err(|e| {
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

pub fn parse(text: &str) -> Result<Vec<Object>, IdentityError> {
    let snapshot = |message: String| IdentityError::Snapshot {
        file: "<snapshot>".into(),
        message,
    };
    let doc: Value =
        serde_norway::from_str(text).map_err(|e| snapshot(format!("is not YAML ({e})")))?;
    let kind = doc.get("kind").and_then(Value::as_str).unwrap_or("");
    let items = match kind {
        "List" => doc
            .get("items")
            .and_then(Value::as_array)
            .ok_or_else(|| snapshot("kind List without an `items` array".into()))?
            .clone(),
        "Pod" | "Namespace" | "Node" | "Service" => vec![doc],
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
    let objects: Vec<Object> = items
        .into_iter()
        .enumerate()
        .map(|(i, item)| object(i, item))
        .collect::<Result<_, _>>()?;
    no_duplicates(&objects)?;
    Ok(objects)
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
