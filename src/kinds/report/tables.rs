//! The report's CSV files: `predictions.csv` (pochitrain's columns), `disagreements.csv`,
//! `classification_report.csv` and `per_sample_dice.csv`.

use std::fmt::Write as _;

use super::summary::Summary;

/// Every disagreement with the reference, one row per sample and model.
pub(super) fn disagreements(summary: &Summary) -> String {
    let mut out = String::from(
        "model,index,image_path,reference,reference_class,predicted,predicted_class,confidence\n",
    );
    for m in &summary.models {
        let list = m.task.as_ref().and_then(|t| t.disagreements.as_ref());
        for d in list.into_iter().flatten() {
            let _ = writeln!(
                out,
                "{},{},{},{},{},{},{},{:.6}",
                csv_field(&m.name),
                d.index,
                csv_field(&summary.sample_file(d.index)),
                d.reference,
                csv_field(&summary.class_name(d.reference)),
                d.predicted,
                csv_field(&summary.class_name(d.predicted)),
                d.confidence
            );
        }
    }
    out
}

/// Per sample and class: Dice, IoU and HD95 against the labels and the reference.
pub(super) fn per_sample(summary: &Summary) -> String {
    let mut out = String::from("model,against,index,file,class,dice,iou,hd95\n");
    let csv = |v: f64| {
        if v.is_nan() {
            String::new()
        } else if v.is_infinite() {
            "inf".into()
        } else {
            format!("{v:.9}")
        }
    };
    for m in &summary.models {
        let Some(task) = &m.task else { continue };
        for (against, s) in [
            ("labels", &task.segmentation_vs_labels),
            ("reference", &task.segmentation_vs_reference),
        ] {
            let Some(s) = s else { continue };
            for (i, row) in s.dice_per_sample.iter().enumerate() {
                for (k, &c) in s.classes.iter().enumerate() {
                    let hd = s
                        .hd95_classes
                        .iter()
                        .position(|&h| h == c)
                        .map(|h| csv(s.hd95_per_sample[i][h]))
                        .unwrap_or_default();
                    let _ = writeln!(
                        out,
                        "{},{against},{i},{},{c},{},{},{hd}",
                        csv_field(&m.name),
                        csv_field(&summary.sample_file(i)),
                        csv(row[k]),
                        csv(s.iou_per_sample[i][k])
                    );
                }
            }
        }
    }
    out
}

fn csv_field(text: &str) -> String {
    if text.contains([',', '"', '\n']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text.to_string()
    }
}

/// pochitrain's per-image columns, one row per sample and model (the model last).
pub(super) fn predictions(summary: &Summary) -> String {
    let mut out = String::from(
        "image_path,predicted,predicted_class,true,true_class,confidence,correct,model\n",
    );
    let labels: Option<Vec<i64>> = summary.labels.as_ref().map(|l| l.iter().copied().collect());
    let names = &summary.data.names;
    for m in &summary.models {
        for (i, (&p, &conf)) in m.predictions.iter().zip(&m.confidence).enumerate() {
            let truth = labels
                .as_ref()
                .and_then(|l| l.get(i).copied())
                .filter(|&t| t >= 0);
            let (t, tc, correct) = match truth {
                Some(t) => (
                    t.to_string(),
                    summary.class_name(t as usize),
                    (t as usize == p).to_string(),
                ),
                None => (String::new(), String::new(), String::new()),
            };
            let path = names
                .files
                .as_ref()
                .and_then(|f| f.get(i).cloned())
                .unwrap_or_else(|| format!("{}#{i}", summary.data.path));
            let _ = writeln!(
                out,
                "{},{p},{},{t},{},{conf:.6},{correct},{}",
                csv_field(&path),
                csv_field(&summary.class_name(p)),
                csv_field(&tc),
                csv_field(&m.name)
            );
        }
    }
    out
}

/// Per-class precision / recall / F1 / support for every labelled model.
pub(super) fn classification_report(summary: &Summary) -> String {
    let mut out = String::from("model,class,class_name,precision,recall,f1-score,support\n");
    for m in &summary.models {
        let Some(c) = m.task.as_ref().and_then(|t| t.classification.as_ref()) else {
            continue;
        };
        for s in &c.per_class {
            let _ = writeln!(
                out,
                "{},{},{},{:.6},{:.6},{:.6},{}",
                csv_field(&m.name),
                s.class,
                csv_field(&summary.class_name(s.class)),
                s.precision,
                s.recall,
                s.f1,
                s.support
            );
        }
        let _ = writeln!(
            out,
            "{},accuracy,accuracy,,,{:.6},{}",
            csv_field(&m.name),
            c.accuracy,
            c.labelled
        );
    }
    out
}
