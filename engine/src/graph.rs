//! `feedline graph`: a pipeline's stages as Mermaid or Graphviz DOT.

use std::fmt::Write as _;

use crate::config::PipelineDef;

struct Node {
    id: String,
    label: String,
}

fn nodes(def: &PipelineDef) -> (Node, Vec<Node>, Vec<Node>, Node) {
    let n = |id: &str, kind: &str, ty: &str| Node {
        id: format!("{kind}_{}", id.replace(|c: char| !c.is_ascii_alphanumeric(), "_")),
        label: format!("{kind}: {id} ({ty})"),
    };
    let source = n(&def.source.id, "source", &def.source.type_name);
    let transforms = def.transforms.iter().map(|t| n(&t.id, "transform", &t.type_name)).collect();
    let sinks = def.sinks.iter().map(|s| n(&s.component.id, "sink", &s.component.type_name)).collect();
    let dead = match &def.dead_letter {
        Some(d) => n(&d.component.id, "dead_letter", &d.component.type_name),
        None => Node { id: "dead_letter".into(), label: "dead_letter: default (file)".into() },
    };
    (source, transforms, sinks, dead)
}

/// Mermaid flowchart.
pub fn mermaid(def: &PipelineDef) -> String {
    let (source, transforms, sinks, dead) = nodes(def);
    let mut s = format!("%% pipeline {}\nflowchart LR\n", def.name);
    let mut prev = &source;
    let _ = writeln!(s, "  {}[\"{}\"]", source.id, source.label);
    for t in &transforms {
        let _ = writeln!(s, "  {}[\"{}\"]", t.id, t.label);
        let _ = writeln!(s, "  {} --> {}", prev.id, t.id);
        prev = t;
    }
    for k in &sinks {
        let _ = writeln!(s, "  {}[(\"{}\")]", k.id, k.label);
        let _ = writeln!(s, "  {} --> {}", prev.id, k.id);
    }
    let _ = writeln!(s, "  {}[(\"{}\")]", dead.id, dead.label);
    let _ = writeln!(s, "  {} -. rejected .-> {}", prev.id, dead.id);
    s
}

/// Graphviz DOT.
pub fn dot(def: &PipelineDef) -> String {
    let (source, transforms, sinks, dead) = nodes(def);
    let mut s = format!("digraph \"{}\" {{\n  rankdir=LR;\n", def.name);
    let _ = writeln!(s, "  {} [label=\"{}\", shape=box];", source.id, source.label);
    let mut prev = &source;
    for t in &transforms {
        let _ = writeln!(s, "  {} [label=\"{}\", shape=box];", t.id, t.label);
        let _ = writeln!(s, "  {} -> {};", prev.id, t.id);
        prev = t;
    }
    for k in &sinks {
        let _ = writeln!(s, "  {} [label=\"{}\", shape=cylinder];", k.id, k.label);
        let _ = writeln!(s, "  {} -> {};", prev.id, k.id);
    }
    let _ = writeln!(s, "  {} [label=\"{}\", shape=cylinder];", dead.id, dead.label);
    let _ = writeln!(s, "  {} -> {} [style=dashed, label=\"rejected\"];", prev.id, dead.id);
    s.push_str("}\n");
    s
}
