//! Latency-percentile plots as SVG: latency (log scale) against percentile on a "nines"
//! axis (50, 90, 99, 99.9, 99.99 equally spaced), one line per system.
//!
//! SVG only, so building and rendering need no font or image libraries: the text is left
//! to whatever displays the file.

use std::path::Path;

use anyhow::{bail, Context as _};
use std::ops::Range;

use plotters::coord::ranged1d::{KeyPointHint, NoDefaultFormatting, Ranged, ValueFormatter};
use plotters::prelude::*;
use serde_json::Value;

use crate::load::{fmt_us, PercentilePoint};

/// One line of the plot.
#[derive(Debug, Clone)]
pub struct Series {
    pub label: String,
    pub points: Vec<PercentilePoint>,
}

/// Position of a percentile on the nines axis: 90 -> 1, 99 -> 2, 99.9 -> 3.
pub fn nines(percentile: f64) -> f64 {
    -(1.0 - percentile / 100.0).max(1e-9).log10()
}

/// The percentile at a position of the nines axis, printed as short as it can be:
/// `50`, `90`, `99`, `99.9`, `99.99`.
pub fn percentile_label(x: f64) -> String {
    let p = 100.0 - 100.0 * 10f64.powf(-x);
    // nines(99.9) is 3.0000000000000004: do not let rounding noise add a decimal.
    let decimals = ((x - 1e-6).ceil() as i64 - 2).max(0) as usize;
    format!("{p:.decimals$}")
}

/// Reads the series of `workload` from a JSON document: either a `compare-report` results
/// file (one series per system, from its median rows) or the `--json` report of one load
/// run (one series, labelled `label` or by its mode and target).
pub fn series_from_json(doc: &Value, workload: &str, label: Option<&str>) -> Vec<Series> {
    let points = |v: &Value| -> Vec<PercentilePoint> {
        serde_json::from_value(v.clone()).unwrap_or_default()
    };
    if let Some(rows) = doc.get("rows").and_then(Value::as_array) {
        return rows
            .iter()
            .filter(|r| r.get("workload").and_then(Value::as_str) == Some(workload))
            .filter_map(|r| {
                let system = r.get("system")?.as_str()?.to_string();
                let pts = points(r.get("percentiles_us")?);
                (!pts.is_empty()).then_some(Series {
                    label: system,
                    points: pts,
                })
            })
            .collect();
    }
    if let Some(p) = doc.get("percentiles_us") {
        let label = label.map(str::to_string).unwrap_or_else(|| {
            format!(
                "{} {}",
                doc.get("mode").and_then(Value::as_str).unwrap_or("load"),
                doc.get("target").and_then(Value::as_str).unwrap_or("")
            )
        });
        let pts = points(p);
        if !pts.is_empty() {
            return vec![Series { label, points: pts }];
        }
    }
    Vec::new()
}

/// The x axis: positions in nines, linear, ticks and labels at 50, 90, 99, 99.9, ...
#[derive(Debug, Clone)]
struct NinesAxis(Range<f64>);

impl Ranged for NinesAxis {
    type FormatOption = NoDefaultFormatting;
    type ValueType = f64;

    fn map(&self, value: &f64, limit: (i32, i32)) -> i32 {
        let span = self.0.end - self.0.start;
        let frac = if span > 0.0 {
            (value - self.0.start) / span
        } else {
            0.0
        };
        limit.0 + (frac * f64::from(limit.1 - limit.0)).round() as i32
    }

    fn key_points<Hint: KeyPointHint>(&self, _hint: Hint) -> Vec<f64> {
        [50.0, 90.0, 99.0, 99.9, 99.99, 99.999, 99.9999]
            .iter()
            .map(|&p| nines(p))
            .filter(|x| self.0.contains(x))
            .collect()
    }

    fn range(&self) -> Range<f64> {
        self.0.clone()
    }
}

impl ValueFormatter<f64> for NinesAxis {
    fn format(value: &f64) -> String {
        percentile_label(*value)
    }
}

/// The y axis: latency in microseconds on a log scale, ticks at 1, 2, 5 times powers of 10.
#[derive(Debug, Clone)]
struct LatencyAxis(Range<f64>);

impl Ranged for LatencyAxis {
    type FormatOption = NoDefaultFormatting;
    type ValueType = f64;

    fn map(&self, value: &f64, limit: (i32, i32)) -> i32 {
        let (lo, hi) = (self.0.start.ln(), self.0.end.ln());
        let frac = if hi > lo {
            (value.max(f64::MIN_POSITIVE).ln() - lo) / (hi - lo)
        } else {
            0.0
        };
        limit.0 + (frac * f64::from(limit.1 - limit.0)).round() as i32
    }

    fn key_points<Hint: KeyPointHint>(&self, hint: Hint) -> Vec<f64> {
        let mut points = Vec::new();
        let mut decade = 10f64.powf(self.0.start.log10().floor());
        while decade <= self.0.end {
            for m in [1.0, 2.0, 5.0] {
                let v = decade * m;
                if self.0.contains(&v) {
                    points.push(v);
                }
            }
            decade *= 10.0;
        }
        // Too many for the space: keep the powers of ten only.
        if points.len() > hint.max_num_points().max(3) {
            points.retain(|v| (v.log10() - v.log10().round()).abs() < 1e-9);
        }
        points
    }

    fn range(&self) -> Range<f64> {
        self.0.clone()
    }
}

impl ValueFormatter<f64> for LatencyAxis {
    fn format(value: &f64) -> String {
        fmt_us(value.round() as u64)
    }
}

/// Colors that stay apart on white.
const COLORS: [RGBColor; 8] = [
    RGBColor(0x1f, 0x77, 0xb4),
    RGBColor(0xff, 0x7f, 0x0e),
    RGBColor(0x2c, 0xa0, 0x2c),
    RGBColor(0xd6, 0x27, 0x28),
    RGBColor(0x94, 0x67, 0xbd),
    RGBColor(0x8c, 0x56, 0x4b),
    RGBColor(0xe3, 0x77, 0xc2),
    RGBColor(0x17, 0xbe, 0xcf),
];

/// Draws `series` to an SVG file at `output`.
pub fn render_svg(series: &[Series], title: &str, output: &Path) -> anyhow::Result<()> {
    let all: Vec<&PercentilePoint> = series.iter().flat_map(|s| &s.points).collect();
    if all.is_empty() {
        bail!("nothing to plot: no latency percentiles in the input");
    }
    let max_x = all
        .iter()
        .map(|p| nines(p.percentile))
        .fold(0.0, f64::max)
        .max(2.0);
    let min_y = all
        .iter()
        .map(|p| p.us.max(1) as f64)
        .fold(f64::MAX, f64::min);
    let max_y = all.iter().map(|p| p.us.max(1) as f64).fold(0.0, f64::max);
    let (lo, hi) = (min_y / 1.5, max_y * 1.5);

    let root = SVGBackend::new(output, (1000, 620)).into_drawing_area();
    root.fill(&WHITE).map_err(plot_err)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(20)
        .x_label_area_size(50)
        .y_label_area_size(80)
        .build_cartesian_2d(NinesAxis(0.2..max_x + 0.15), LatencyAxis(lo..hi))
        .map_err(plot_err)?;
    chart
        .configure_mesh()
        .x_desc("percentile")
        .y_desc("latency")
        .draw()
        .map_err(plot_err)?;
    for (i, s) in series.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let pts: Vec<(f64, f64)> = s
            .points
            .iter()
            .map(|p| (nines(p.percentile), p.us.max(1) as f64))
            .collect();
        chart
            .draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))
            .map_err(plot_err)?
            .label(s.label.clone())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
        chart
            .draw_series(pts.into_iter().map(|p| Circle::new(p, 3, color.filled())))
            .map_err(plot_err)?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(plot_err)?;
    root.present().map_err(plot_err)?;
    Ok(())
}

fn plot_err<E: std::fmt::Display>(e: E) -> anyhow::Error {
    anyhow::anyhow!("plotting failed: {e}")
}

/// Reads the `inputs` (results or load JSON files), plots `workload` and writes `output`.
pub fn plot_files(
    inputs: &[impl AsRef<Path>],
    labels: &[String],
    workload: &str,
    title: Option<&str>,
    output: &Path,
) -> anyhow::Result<usize> {
    let mut series = Vec::new();
    for (i, path) in inputs.iter().enumerate() {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let doc: Value = serde_json::from_str(&text)
            .with_context(|| format!("{} is not JSON", path.display()))?;
        series.extend(series_from_json(
            &doc,
            workload,
            labels.get(i).map(String::as_str),
        ));
    }
    let default_title = format!("latency by percentile: {workload}");
    render_svg(&series, title.unwrap_or(&default_title), output)?;
    Ok(series.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nines_axis() {
        assert!((nines(90.0) - 1.0).abs() < 1e-9);
        assert!((nines(99.9) - 3.0).abs() < 1e-9);
        assert_eq!(percentile_label(nines(50.0)), "50");
        assert_eq!(percentile_label(nines(99.0)), "99");
        assert_eq!(percentile_label(nines(99.9)), "99.9");
        assert_eq!(percentile_label(nines(99.999)), "99.999");
        assert_eq!(percentile_label(nines(99.99)), "99.99");
    }

    #[test]
    fn renders_svg() {
        let dir = std::env::temp_dir().join(format!("uringlb-plot-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let out = dir.join("p.svg");
        let pts = |k: u64| {
            [50.0, 90.0, 99.0, 99.9, 99.99]
                .iter()
                .enumerate()
                .map(|(i, &p)| PercentilePoint {
                    percentile: p,
                    us: k * (i as u64 + 1) * 100,
                })
                .collect()
        };
        let series = [
            Series {
                label: "a".into(),
                points: pts(1),
            },
            Series {
                label: "b".into(),
                points: pts(3),
            },
        ];
        render_svg(&series, "t", &out).unwrap();
        let svg = std::fs::read_to_string(&out).unwrap();
        assert!(svg.starts_with("<svg") && svg.contains("99.9"), "{svg}");
        assert!(render_svg(&[], "t", &out).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
