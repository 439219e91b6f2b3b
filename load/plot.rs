//! SVG plots of a run (plotters with only its SVG backend: text is written
//! as SVG `<text>`, so no font library is needed to draw).

use std::path::Path;

use plotters::coord::Shift;
use plotters::prelude::*;

use crate::results::{RecoveryRow, Results};

type Area<'a> = DrawingArea<SVGBackend<'a>, Shift>;
type Res<T> = Result<T, String>;

const PALETTE: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
    RGBColor(255, 127, 14),
    RGBColor(23, 190, 207),
];

fn e<E: std::fmt::Debug>(err: E) -> String {
    format!("plot: {err:?}")
}

/// One line of a chart: its label, colour, dashed or not, points.
struct Line {
    label: String,
    color: RGBColor,
    dashed: bool,
    points: Vec<(f64, f64)>,
}

/// A number as an axis label: no decimals unless it needs them.
fn label(v: &f64) -> String {
    if (v - v.round()).abs() < 1e-9 || v.abs() >= 100.0 {
        format!("{v:.0}")
    } else if v.abs() >= 1.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.3}").trim_end_matches('0').to_owned()
    }
}

/// How a chart is drawn besides its lines.
struct Style<'a> {
    log_y: bool,
    legend: SeriesLabelPosition,
    /// Vertical lines at x, labelled.
    marks: &'a [(String, f64)],
}

const PLAIN: Style<'static> = Style { log_y: false, legend: SeriesLabelPosition::UpperLeft, marks: &[] };

/// A line chart of `lines` on `area`.
fn chart(area: &Area<'_>, title: &str, x_desc: &str, y_desc: &str, lines: &[Line], style: &Style<'_>) -> Res<()> {
    let (log_y, marks) = (style.log_y, style.marks);
    let pts = || lines.iter().flat_map(|l| l.points.iter().copied());
    let x_max = pts().map(|p| p.0).fold(0.0f64, f64::max).max(1.0) * 1.05;
    let x_min = pts().map(|p| p.0).fold(f64::MAX, f64::min).min(0.0);
    let y_max = pts().map(|p| p.1).fold(0.0f64, f64::max).max(1.0) * 1.15;
    let y_min_pos = pts().map(|p| p.1).filter(|y| *y > 0.0).fold(f64::MAX, f64::min);
    let mut builder = ChartBuilder::on(area);
    builder.caption(title, ("sans-serif", 18)).margin(12).x_label_area_size(40).y_label_area_size(70);
    macro_rules! draw {
        ($chart:expr, $y_lo:expr, $y_hi:expr) => {{
            let mut c = $chart;
            c.configure_mesh()
                .x_desc(x_desc)
                .y_desc(y_desc)
                .x_label_formatter(&label)
                .y_label_formatter(&label)
                .y_labels(12)
                .light_line_style(WHITE.mix(0.0))
                .draw()
                .map_err(e)?;
            for l in lines {
                let style = l.color.stroke_width(2);
                let series = if l.dashed {
                    c.draw_series(DashedLineSeries::new(l.points.iter().copied(), 6, 4, style)).map_err(e)?
                } else {
                    c.draw_series(LineSeries::new(l.points.iter().copied(), style)).map_err(e)?
                };
                let color = l.color;
                series.label(l.label.clone()).legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], color));
                c.draw_series(l.points.iter().map(|&p| Circle::new(p, 2, l.color.filled()))).map_err(e)?;
            }
            for (i, (label, x)) in marks.iter().enumerate() {
                let color = if i == 0 { BLACK } else { PALETTE[4] };
                c.draw_series(std::iter::once(PathElement::new(vec![(*x, $y_lo), (*x, $y_hi)], color.stroke_width(1))))
                    .map_err(e)?;
                let font = ("sans-serif", 12).into_font().color(&color);
                c.draw_series(std::iter::once(Text::new(format!(" {label}"), (*x, $y_hi), font))).map_err(e)?;
            }
            c.configure_series_labels()
                .position(style.legend.clone())
                .background_style(WHITE.mix(0.85))
                .border_style(BLACK)
                .draw()
                .map_err(e)?;
        }};
    }
    if log_y {
        let y_min = if y_min_pos == f64::MAX { 1.0 } else { y_min_pos / 2.0 };
        let y_hi = y_max * 2.0;
        draw!(builder.build_cartesian_2d(x_min..x_max, (y_min..y_hi).log_scale()).map_err(e)?, y_min, y_hi / 1.6);
    } else {
        draw!(builder.build_cartesian_2d(x_min..x_max, 0.0..y_max).map_err(e)?, 0.0, y_max / 1.1);
    }
    Ok(())
}

/// Write every plot of `r` into `dir`; their file names.
pub fn all(r: &Results, dir: &Path) -> Res<Vec<String>> {
    let mut written = Vec::new();
    if !r.scaling.is_empty() {
        scaling(r, &dir.join("scaling.svg"))?;
        written.push("scaling.svg".to_owned());
    }
    if !r.latency.is_empty() {
        latency(r, &dir.join("latency.svg"))?;
        written.push("latency.svg".to_owned());
    }
    for row in &r.recovery {
        recovery(row, &dir.join(&row.plot))?;
        written.push(row.plot.clone());
    }
    if !r.sagas.is_empty() {
        sagas(r, &dir.join("sagas.svg"))?;
        written.push("sagas.svg".to_owned());
    }
    Ok(written)
}

fn scaling(r: &Results, path: &Path) -> Res<()> {
    let root = SVGBackend::new(path, (1100, 450)).into_drawing_area();
    root.fill(&WHITE).map_err(e)?;
    let (left, right) = root.split_horizontally(550);
    let mut rate = Vec::new();
    let mut eff = Vec::new();
    for (i, handler) in ["io", "cpu"].iter().enumerate() {
        let rows: Vec<_> = r.scaling.iter().filter(|s| s.handler == *handler).collect();
        let name = if *handler == "io" { "I/O-bound" } else { "CPU-bound" };
        rate.push(Line {
            label: format!("{name}, measured"),
            color: PALETTE[i],
            dashed: false,
            points: rows.iter().map(|s| (s.instances as f64, s.rps)).collect(),
        });
        if let Some(one) = rows.iter().find(|s| s.instances == 1) {
            rate.push(Line {
                label: format!("{name}, linear from 1 instance"),
                color: PALETTE[i],
                dashed: true,
                points: rows.iter().map(|s| (s.instances as f64, s.instances as f64 * one.rps)).collect(),
            });
        }
        eff.push(Line {
            label: name.to_owned(),
            color: PALETTE[i],
            dashed: false,
            points: rows.iter().map(|s| (s.instances as f64, 100.0 * s.efficiency)).collect(),
        });
    }
    eff.push(Line {
        label: "the design note's claim".to_owned(),
        color: PALETTE[3],
        dashed: true,
        points: vec![(1.0, 100.0), (2.0, 95.0), (3.0, 90.0), (5.0, 86.0), (10.0, 82.0)],
    });
    chart(&left, "Throughput (closed loop)", "instances", "replies per second", &rate, &PLAIN)?;
    let low = Style { legend: SeriesLabelPosition::LowerLeft, ..PLAIN };
    chart(&right, "Scaling efficiency", "instances", "% of linear", &eff, &low)?;
    root.present().map_err(e)
}

fn latency(r: &Results, path: &Path) -> Res<()> {
    let root = SVGBackend::new(path, (1100, 450)).into_drawing_area();
    root.fill(&WHITE).map_err(e)?;
    let (left, right) = root.split_horizontally(550);
    let mut counts: Vec<usize> = r.latency.iter().map(|l| l.instances).collect();
    counts.dedup();
    let series = |catga: fn(&crate::results::LatencyRow) -> u64, raw: fn(&crate::results::LatencyRow) -> u64| {
        let mut lines = Vec::new();
        for (i, n) in counts.iter().enumerate() {
            let rows: Vec<_> = r.latency.iter().filter(|l| l.instances == *n).collect();
            lines.push(Line {
                label: format!("Catga, {n} instance(s)"),
                color: PALETTE[i % PALETTE.len()],
                dashed: false,
                points: rows.iter().map(|l| (l.offered_rps / 1000.0, catga(l) as f64 / 1000.0)).collect(),
            });
            lines.push(Line {
                label: format!("raw async-nats, {n} responder(s)"),
                color: PALETTE[i % PALETTE.len()],
                dashed: true,
                points: rows.iter().map(|l| (l.offered_rps / 1000.0, raw(l) as f64 / 1000.0)).collect(),
            });
        }
        lines
    };
    let x = "offered, thousand requests/s";
    let p99 = series(|l| l.p99_us, |l| l.raw_p99_us);
    let p999 = series(|l| l.p999_us, |l| l.raw_p999_us);
    let log = Style { log_y: true, ..PLAIN };
    chart(&left, "p99 at a fixed offered rate", x, "ms (log)", &p99, &log)?;
    chart(&right, "p99.9 at a fixed offered rate", x, "ms (log)", &p999, &log)?;
    root.present().map_err(e)
}

fn recovery(row: &RecoveryRow, path: &Path) -> Res<()> {
    let root = SVGBackend::new(path, (1000, 600)).into_drawing_area();
    root.fill(&WHITE).map_err(e)?;
    let (top, bottom) = root.split_vertically(330);
    let s = |ms: u64| ms as f64 / 1000.0;
    let lat = [
        Line {
            label: "p99 per 100 ms (failures as slowest)".into(),
            color: PALETTE[0],
            dashed: false,
            points: row.timeline.iter().map(|t| (s(t.0), (t.1 as f64 / 1000.0).max(0.001))).collect(),
        },
        Line {
            label: "slowest per 100 ms".into(),
            color: PALETTE[1],
            dashed: true,
            points: row.timeline.iter().map(|t| (s(t.0), (t.2 as f64 / 1000.0).max(0.001))).collect(),
        },
    ];
    let thr = [Line {
        label: "replies per second, per 100 ms".into(),
        color: PALETTE[2],
        dashed: false,
        points: row.timeline.iter().map(|t| (s(t.0), t.3)).collect(),
    }];
    let title = format!("{}: {}", row.scenario, row.event);
    let title = if title.len() > 110 { format!("{}…", &title[..title.floor_char_boundary(108)]) } else { title };
    let marks: Vec<(String, f64)> = row.marks.iter().map(|(l, t)| (l.clone(), s(*t))).collect();
    let right = SeriesLabelPosition::UpperRight;
    chart(&top, &title, "s", "latency, ms (log)", &lat, &Style { log_y: true, legend: right, marks: &marks })?;
    let x = "s from the start of the measured stretch";
    chart(
        &bottom,
        "throughput",
        x,
        "replies/s",
        &thr,
        &Style { log_y: false, legend: SeriesLabelPosition::LowerRight, marks: &marks },
    )?;
    root.present().map_err(e)
}

fn sagas(r: &Results, path: &Path) -> Res<()> {
    let root = SVGBackend::new(path, (1100, 450)).into_drawing_area();
    root.fill(&WHITE).map_err(e)?;
    let (left, right) = root.split_horizontally(550);
    let mut counts: Vec<usize> = r.sagas.iter().map(|s| s.instances).collect();
    counts.dedup();
    let lines = |f: fn(&crate::results::SagaRow) -> f64| -> Vec<Line> {
        counts
            .iter()
            .enumerate()
            .map(|(i, n)| Line {
                label: format!("{n} instance(s)"),
                color: PALETTE[i % PALETTE.len()],
                dashed: false,
                points: r.sagas.iter().filter(|s| s.instances == *n).map(|s| (s.in_flight as f64, f(s))).collect(),
            })
            .collect()
    };
    let per_s = lines(|s| s.per_s);
    let p99 = lines(|s| s.p99_us as f64 / 1000.0);
    chart(&left, "3-step sagas per second (closed loop)", "sagas in flight", "per second", &per_s, &PLAIN)?;
    chart(&right, "saga latency, p99", "sagas in flight", "ms", &p99, &PLAIN)?;
    root.present().map_err(e)
}
