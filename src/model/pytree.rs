//! Tensor names from a pytree spec: the JSON that AOTInductor packages
//! record as their call spec (`torch.utils._pytree`'s `treespec_dumps`),
//! and that the shim writes for a TorchScript model's output.
//!
//! Outputs are named in order: a lone tensor `output__0`; the elements of a
//! top-level tuple or list `output__0`, `output__1`, …; the values of a
//! top-level dict by key; nested containers add `.INDEX` or `.KEY`
//! (`output__1.0`, `output__2.logits`). Inputs of a package: positional
//! arguments `input__0`, `input__1`, …, keyword arguments by name.

use serde::Deserialize;

/// A node of a pytree spec.
#[derive(Debug, Deserialize)]
struct Node {
    #[serde(rename = "type")]
    kind: Option<String>,
    /// For dicts (and types registered with keys): a JSON list of the keys.
    context: Option<String>,
    #[serde(default)]
    children_spec: Vec<Node>,
}

/// What a spec holds that uminfer cannot name or carry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    /// Not a pytree spec uminfer reads.
    #[error("unreadable pytree spec: {0}")]
    Unreadable(String),
    /// A value in the tree that is not a tensor or a container of tensors.
    #[error("`{name}` is {kind}; uminfer carries tensors, and tuples, lists and dicts of tensors")]
    NotATensor { name: String, kind: String },
}

/// Type names the shim gives values that are not tensors or containers.
const UNSUPPORTED: &str = "uminfer.unsupported";

fn parse(spec: &str) -> Result<Node, SpecError> {
    let (version, root): (u32, Node) = serde_json::from_str(spec).map_err(|e| SpecError::Unreadable(e.to_string()))?;
    if version != 1 {
        return Err(SpecError::Unreadable(format!("protocol version {version}, uminfer reads version 1")));
    }
    Ok(root)
}

/// The keys a container's context lists, one per child; `None` for
/// positional containers (tuples, lists, named tuples).
fn keys(node: &Node) -> Option<Vec<String>> {
    let list: Vec<serde_json::Value> = serde_json::from_str(node.context.as_deref()?).ok()?;
    (list.len() == node.children_spec.len()).then(|| {
        list.into_iter()
            .map(|k| match k {
                serde_json::Value::String(s) => s,
                other => other.to_string(),
            })
            .collect()
    })
}

/// Appends the name of every tensor under `node` (itself named `name`).
fn walk(node: &Node, name: &str, out: &mut Vec<String>) -> Result<(), SpecError> {
    match node.kind.as_deref() {
        None => out.push(name.to_string()),
        Some(UNSUPPORTED) => {
            let what = node.context.as_deref().unwrap_or("a value");
            let article = if what.starts_with(['A', 'E', 'I', 'O', 'U', 'a', 'e', 'i', 'o', 'u']) { "an" } else { "a" };
            return Err(SpecError::NotATensor { name: name.to_string(), kind: format!("{article} {what}") });
        }
        Some(_) => {
            let keys = keys(node);
            for (i, child) in node.children_spec.iter().enumerate() {
                let seg = keys.as_ref().map_or_else(|| i.to_string(), |k| k[i].clone());
                walk(child, &format!("{name}.{seg}"), out)?;
            }
        }
    }
    Ok(())
}

/// The children of a top-level container, named `{prefix}__{i}` when
/// positional and by key otherwise.
fn walk_top(node: &Node, prefix: &str, out: &mut Vec<String>) -> Result<(), SpecError> {
    let keys = keys(node);
    for (i, child) in node.children_spec.iter().enumerate() {
        let name = keys.as_ref().map_or_else(|| format!("{prefix}__{i}"), |k| k[i].clone());
        walk(child, &name, out)?;
    }
    Ok(())
}

/// The names of a model's outputs, in the order they are flattened.
pub fn output_names(spec: &str) -> Result<Vec<String>, SpecError> {
    let root = parse(spec)?;
    let mut out = Vec::new();
    match root.kind.as_deref() {
        None => out.push("output__0".to_string()),
        Some(UNSUPPORTED) => walk(&root, "output__0", &mut out)?,
        Some(_) => walk_top(&root, "output", &mut out)?,
    }
    Ok(out)
}

/// The names of a package's inputs, in the order it takes them, from the
/// input part of its call spec (a tuple of the positional arguments and a
/// dict of the keyword arguments).
pub fn input_names(spec: &str) -> Result<Vec<String>, SpecError> {
    let root = parse(spec)?;
    let [args, kwargs] = root.children_spec.as_slice() else {
        return Err(SpecError::Unreadable("an input spec is a pair of positional and keyword arguments".into()));
    };
    let mut out = Vec::new();
    walk_top(args, "input", &mut out)?;
    walk_top(kwargs, "input", &mut out)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const LEAF: &str = r#"{"type": null, "context": null, "children_spec": []}"#;

    fn tuple(children: &[&str]) -> String {
        format!(r#"{{"type": "builtins.tuple", "context": "null", "children_spec": [{}]}}"#, children.join(", "))
    }

    fn dict(keys: &[&str], children: &[&str]) -> String {
        let ctx = serde_json::to_string(&serde_json::to_string(keys).unwrap()).unwrap();
        format!(r#"{{"type": "builtins.dict", "context": {ctx}, "children_spec": [{}]}}"#, children.join(", "))
    }

    #[test]
    fn a_lone_tensor_is_named_output_0() {
        assert_eq!(output_names(&format!("[1, {LEAF}]")).unwrap(), ["output__0"]);
    }

    #[test]
    fn tuples_are_positional_dicts_keyed_and_nesting_joins_with_dots() {
        let spec = format!("[1, {}]", tuple(&[LEAF, &tuple(&[LEAF, LEAF]), &dict(&["a", "b"], &[LEAF, &tuple(&[LEAF])])]));
        assert_eq!(output_names(&spec).unwrap(), ["output__0", "output__1.0", "output__1.1", "output__2.a", "output__2.b.0"]);
        let top_dict = format!("[1, {}]", dict(&["logits", "probs"], &[LEAF, LEAF]));
        assert_eq!(output_names(&top_dict).unwrap(), ["logits", "probs"]);
    }

    #[test]
    fn integer_keys_are_written_in_decimal() {
        let spec = format!(r#"[1, {{"type": "builtins.dict", "context": "[3, 7]", "children_spec": [{LEAF}, {LEAF}]}}]"#);
        assert_eq!(output_names(&spec).unwrap(), ["3", "7"]);
    }

    #[test]
    fn a_value_that_is_not_a_tensor_is_refused_by_name() {
        let bad = r#"{"type": "uminfer.unsupported", "context": "Int", "children_spec": []}"#;
        let spec = format!("[1, {}]", tuple(&[LEAF, bad]));
        let e = output_names(&spec).unwrap_err();
        assert_eq!(e, SpecError::NotATensor { name: "output__1".into(), kind: "an Int".into() });
        assert!(e.to_string().contains("`output__1` is an Int"), "{e}");
    }

    #[test]
    fn package_inputs_are_positional_then_by_keyword() {
        let spec = format!("[1, {}]", tuple(&[&tuple(&[LEAF, LEAF]), &dict(&["attention_mask"], &[LEAF])]));
        assert_eq!(input_names(&spec).unwrap(), ["input__0", "input__1", "attention_mask"]);
        // tiny.pt2's own input spec, as AOTInductor wrote it.
        let tiny = r#"[1, {"type": "builtins.tuple", "context": "null", "children_spec": [{"type": "builtins.tuple", "context": "null", "children_spec": [{"type": null, "context": null, "children_spec": []}]}, {"type": "builtins.dict", "context": "[]", "children_spec": []}]}]"#;
        assert_eq!(input_names(tiny).unwrap(), ["input__0"]);
    }

    #[test]
    fn unreadable_specs_say_so() {
        assert!(matches!(output_names("{}"), Err(SpecError::Unreadable(_))));
        assert!(output_names(&format!("[2, {LEAF}]")).unwrap_err().to_string().contains("version 2"));
        assert!(matches!(input_names(&format!("[1, {LEAF}]")), Err(SpecError::Unreadable(_))));
    }
}
