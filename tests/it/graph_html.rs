//! `pochi graph --format html` draws edges that can be told apart: no two edges end at the
//! same point, and no two run on top of each other (an upright or a lane shared over a
//! stretch), on the example pipelines (`pipelines/*.toml`, e.g. the report over four
//! models) and on a wide generated one. Checked on the SVG the binary writes; how it
//! looks in a browser is checked by hand (headless Chromium screenshots), not here.

use crate::common::Project;

/// A straight piece of an edge: horizontal (`y`, from `a` to `b` in x) or vertical (`x`,
/// from `a` to `b` in y).
#[derive(Debug, Clone, Copy)]
struct Segment {
    vertical: bool,
    at: f64,
    a: f64,
    b: f64,
}

/// One edge's path data: its end point and its straight pieces (a curve has none).
struct Edge {
    d: String,
    end: (f64, f64),
    segments: Vec<Segment>,
}

fn edges(html: &str) -> Vec<Edge> {
    html.split("<path class=\"edge\" d=\"")
        .skip(1)
        .map(|rest| parse(&rest[..rest.find('"').unwrap()]))
        .collect()
}

/// Parses the `M x y C ...` curves and `M x y H x V y ...` polylines the renderer writes.
fn parse(d: &str) -> Edge {
    let tokens: Vec<&str> = d.split([' ', ',']).filter(|t| !t.is_empty()).collect();
    let number = |i: usize| -> f64 { tokens[i].parse().unwrap() };
    let (mut x, mut y) = (number(1), number(2));
    let mut segments = Vec::new();
    let mut i = 3;
    while i < tokens.len() {
        match tokens[i] {
            "H" => {
                let to = number(i + 1);
                segments.push(Segment {
                    vertical: false,
                    at: y,
                    a: x,
                    b: to,
                });
                x = to;
                i += 2;
            }
            "V" => {
                let to = number(i + 1);
                segments.push(Segment {
                    vertical: true,
                    at: x,
                    a: y,
                    b: to,
                });
                y = to;
                i += 2;
            }
            "C" => {
                (x, y) = (number(i + 5), number(i + 6));
                i += 7;
            }
            other => panic!("unexpected `{other}` in {d}"),
        }
    }
    Edge {
        d: d.to_string(),
        end: (x, y),
        segments,
    }
}

/// Two pieces on one line that share more than a point.
fn overlap(p: &Segment, q: &Segment) -> bool {
    let (p0, p1) = (p.a.min(p.b), p.a.max(p.b));
    let (q0, q1) = (q.a.min(q.b), q.a.max(q.b));
    p.vertical == q.vertical && p.at == q.at && p0.max(q0) < p1.min(q1)
}

fn assert_distinguishable(html: &str, what: &str) -> usize {
    let edges = edges(html);
    for (index, e) in edges.iter().enumerate() {
        for f in &edges[index + 1..] {
            assert_ne!(
                e.end, f.end,
                "{what}: two edges end at one point: {} / {}",
                e.d, f.d
            );
            for p in &e.segments {
                for q in &f.segments {
                    assert!(
                        !overlap(p, q),
                        "{what}: edges run on top of each other: {} / {}",
                        e.d,
                        f.d
                    );
                }
            }
        }
    }
    edges.len()
}

#[test]
fn edges_into_a_stage_with_many_inputs_are_distinguishable_in_the_examples() {
    let pipelines = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("pipelines");
    let project = Project::new("");
    let mut checked = 0;
    for entry in std::fs::read_dir(&pipelines).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("toml") {
            continue;
        }
        let run = project.run(&["graph", path.to_str().unwrap(), "--format", "html"]);
        run.assert_ok();
        checked += assert_distinguishable(&run.stdout, &path.display().to_string());
    }
    // resnet18.toml alone has ten edges, five of them into its report.
    assert!(checked >= 10, "only {checked} edges checked");
}

#[test]
fn a_sink_over_every_stage_of_a_chain_gets_distinct_ports_and_uprights() {
    // a -> b -> c -> d -> e, and `sink` needs all five (four edges skip layers), plus
    // `fan` needs a, b and c: many lanes through the same gaps.
    let mut pipeline = String::from("[pipeline]\nname = \"wide\"\n");
    let chain = ["a", "b", "c", "d", "e"];
    for (i, name) in chain.iter().enumerate() {
        let input = match i {
            0 => String::new(),
            _ => format!("inputs = {{ x = \"@{}\" }}\n", chain[i - 1]),
        };
        pipeline.push_str(&format!(
            "\n[stages.{name}]\nkind = \"command\"\nrun = [\"true\"]\n{input}outputs = {{ out = \"out/{name}.txt\" }}\n"
        ));
    }
    let all = |names: &[&str]| {
        names
            .iter()
            .map(|n| format!("{n} = \"@{n}\""))
            .collect::<Vec<_>>()
            .join(", ")
    };
    pipeline.push_str(&format!(
        "\n[stages.sink]\nkind = \"command\"\nrun = [\"true\"]\ninputs = {{ {} }}\noutputs = {{ out = \"out/sink.txt\" }}\n",
        all(&chain)
    ));
    pipeline.push_str(&format!(
        "\n[stages.fan]\nkind = \"command\"\nrun = [\"true\"]\ninputs = {{ {} }}\noutputs = {{ out = \"out/fan.txt\" }}\n",
        all(&chain[..3])
    ));
    let project = Project::new(&pipeline);
    let run = project.run(&["graph", "pipeline.toml", "--format", "html"]);
    run.assert_ok();
    assert_eq!(assert_distinguishable(&run.stdout, "wide"), 4 + 5 + 3);
}
