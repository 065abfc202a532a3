//! Line charts as SVG files in bench/report/, drawn with plotters. Text is laid out with
//! the DejaVu Sans font of the system (Debian's fonts-dejavu-core); without it no plot is
//! drawn and the report says so.

use std::sync::OnceLock;

use anyhow::{Context as _, anyhow};
use plotters::prelude::*;
use regedge_tests::process::workspace_root;

pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
}

const FONT_FILES: &[&str] =
    &["/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf", "/usr/share/fonts/dejavu/DejaVuSans.ttf"];

fn font() -> anyhow::Result<()> {
    static FONT: OnceLock<Result<(), String>> = OnceLock::new();
    FONT.get_or_init(|| {
        let bytes = FONT_FILES
            .iter()
            .find_map(|f| std::fs::read(f).ok())
            .ok_or_else(|| format!("no font: none of {FONT_FILES:?} (apt-get install fonts-dejavu-core)"))?;
        let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
        plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).map_err(|_| "invalid font".to_owned())
    })
    .clone()
    .map_err(|e| anyhow!(e))
}

const COLORS: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
];

/// Draws `series` as lines with points into bench/report/`file`. With `log_x`, x values
/// must be positive and the axis is logarithmic.
pub fn lines(
    file: &str,
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[Series],
    log_x: bool,
) -> anyhow::Result<()> {
    font()?;
    let path = workspace_root().join("bench").join("report").join(file);
    let tx = |x: f64| if log_x { x.max(1e-9).log10() } else { x };
    let all: Vec<(f64, f64)> = series
        .iter()
        .flat_map(|s| s.points.iter().map(|&(x, y)| (tx(x), y)))
        .filter(|p| p.0.is_finite() && p.1.is_finite())
        .collect();
    if all.is_empty() {
        return Err(anyhow!("nothing to plot"));
    }
    let (mut x0, mut x1) = all.iter().fold((f64::MAX, f64::MIN), |(a, b), p| (a.min(p.0), b.max(p.0)));
    let y1 = all.iter().fold(f64::MIN, |a, p| a.max(p.1)) * 1.08;
    let y0 = all.iter().fold(f64::MAX, |a, p| a.min(p.1)).min(0.0);
    if !log_x && x0 > 0.0 {
        x0 = 0.0;
    }
    if x1 - x0 < 1e-9 {
        x0 -= 1.0;
        x1 += 1.0;
    }
    let y1 = if y1 - y0 < 1e-9 { y0 + 1.0 } else { y1 };
    let root = SVGBackend::new(&path, (900, 540)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow!("{e:?}"))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(45)
        .y_label_area_size(75)
        .build_cartesian_2d(x0..x1, y0..y1)
        .map_err(|e| anyhow!("{e:?}"))?;
    let x_fmt = |v: &f64| {
        let v = if log_x { 10f64.powf(*v) } else { *v };
        short(v)
    };
    chart
        .configure_mesh()
        .x_desc(x_label)
        .y_desc(y_label)
        .x_label_formatter(&x_fmt)
        .y_label_formatter(&|v: &f64| short(*v))
        .label_style(("sans-serif", 13))
        .draw()
        .map_err(|e| anyhow!("{e:?}"))?;
    for (k, s) in series.iter().enumerate() {
        let color = COLORS[k % COLORS.len()];
        let pts: Vec<(f64, f64)> =
            s.points.iter().map(|&(x, y)| (tx(x), y)).filter(|p| p.0.is_finite() && p.1.is_finite()).collect();
        // Earlier series drawn wider, so that a series hidden under a later one with the
        // same values still shows at its edges.
        let width = 2 + (2 * (series.len() - 1 - k) as u32).min(6);
        let style = ShapeStyle { color: color.to_rgba(), filled: true, stroke_width: width };
        chart
            .draw_series(LineSeries::new(pts.clone(), style))
            .map_err(|e| anyhow!("{e:?}"))?
            .label(s.name.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], style));
        if pts.len() <= 40 {
            chart
                .draw_series(pts.iter().map(|&p| Circle::new(p, 1 + width, color.filled())))
                .map_err(|e| anyhow!("{e:?}"))?;
        }
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 13))
        .position(SeriesLabelPosition::UpperLeft)
        .draw()
        .map_err(|e| anyhow!("{e:?}"))?;
    root.present().map_err(|e| anyhow!("{e:?}")).with_context(|| format!("write {}", path.display()))?;
    Ok(())
}

fn short(v: f64) -> String {
    let a = v.abs();
    if a >= 1e6 {
        format!("{:.1}M", v / 1e6)
    } else if a >= 1e4 {
        format!("{:.0}k", v / 1e3)
    } else if a >= 1e3 {
        format!("{:.1}k", v / 1e3)
    } else if a >= 10.0 || a == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

/// Latency CDF points (µs, percent) of an HDR histogram in ns.
pub fn cdf(h: &hdrhistogram::Histogram<u64>) -> Vec<(f64, f64)> {
    if h.is_empty() {
        return Vec::new();
    }
    let mut out = Vec::new();
    for q in [0.0, 0.01, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.98, 0.99, 0.995, 0.999, 0.9999, 1.0]
    {
        out.push((h.value_at_quantile(q).max(1) as f64 / 1000.0, q * 100.0));
    }
    out
}
