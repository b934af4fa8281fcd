//! The SVG plots of docs/bench/ (plotters' SVG backend).

use std::path::Path;

use anyhow::Result;
use plotters::prelude::*;
use socklb_bench_results::format::{count, fmt};
use socklb_bench_results::targets;
use socklb_bench_results::{
    AgentChangeRow, DatapathRow, IptablesBackend, IptablesRow, Kind, Maps, MemoryRow, Mode, NftRow,
    Results, SocklbControlRow, Spread, service_counts,
};

use super::KINDS;

/// The dashed target lines.
const TARGET_COLOR: RGBColor = RGBColor(120, 170, 210);
const W: u32 = 1200;
const H: u32 = 380;

fn mode_style(mode: Mode) -> (RGBColor, &'static str) {
    match mode {
        Mode::Direct => (RGBColor(40, 40, 40), "direct"),
        Mode::Socklb => (RGBColor(31, 119, 180), "socklb"),
        Mode::Iptables => (RGBColor(214, 39, 40), "iptables (last)"),
        Mode::IptablesFirst => (RGBColor(255, 127, 14), "iptables (first)"),
        Mode::Nft => (RGBColor(44, 160, 44), "nftables"),
    }
}

/// A plotted point: the median with its range (min, max: NaN for no bar).
#[derive(Clone, Copy, Debug)]
struct Sp {
    median: f64,
    min: f64,
    max: f64,
}

impl From<&Spread> for Sp {
    fn from(s: &Spread) -> Sp {
        Sp {
            median: s.median,
            min: s.min,
            max: s.max,
        }
    }
}

impl Sp {
    /// A single figure, without a bar.
    fn single(v: f64) -> Sp {
        Sp {
            median: v,
            min: f64::NAN,
            max: f64::NAN,
        }
    }

    fn scaled(self, k: f64) -> Sp {
        Sp {
            median: self.median * k,
            min: self.min * k,
            max: self.max * k,
        }
    }
}

/// One legend entry: label, colour, dashed.
type LegendItem = (String, RGBColor, bool);

/// A legend below the charts, items laid out left to right, wrapping.
fn legend_strip(
    area: &DrawingArea<SVGBackend<'_>, plotters::coord::Shift>,
    items: &[LegendItem],
) -> Result<()> {
    let (w, _) = area.dim_in_pixel();
    let (mut x, mut y) = (60i32, 12i32);
    for (label, color, dashed) in items {
        let width = 34 + 7 * label.chars().count() as i32;
        if x + width > w as i32 - 10 {
            x = 60;
            y += 18;
        }
        if *dashed {
            area.draw(&PathElement::new(
                vec![(x, y), (x + 8, y)],
                color.stroke_width(2),
            ))?;
            area.draw(&PathElement::new(
                vec![(x + 14, y), (x + 22, y)],
                color.stroke_width(2),
            ))?;
        } else {
            area.draw(&PathElement::new(
                vec![(x, y), (x + 22, y)],
                color.stroke_width(2),
            ))?;
        }
        area.draw(&Text::new(
            label.clone(),
            (x + 28, y - 7),
            ("sans-serif", 13).into_font().color(&BLACK),
        ))?;
        x += width + 18;
    }
    Ok(())
}

#[derive(Clone, Copy)]
pub(super) enum Metric {
    RateRatio,
    P99,
}

type Panel<'a, 'b> = ChartContext<
    'a,
    SVGBackend<'b>,
    Cartesian2d<plotters::coord::types::RangedCoordf64, plotters::coord::types::RangedCoordf64>,
>;

/// Data-path rows (ClusterIP or NodePort, with their modes), one panel per kind.
pub(super) fn datapath(
    rows: &[DatapathRow],
    modes_of: &[(Mode, &str)],
    file: &Path,
    metric: Metric,
    prefix: &str,
) -> Result<()> {
    let ns = service_counts(rows);
    let root = SVGBackend::new(file, (W, H)).into_drawing_area();
    root.fill(&WHITE)?;
    let (title, sub) = match metric {
        Metric::RateRatio => (
            "Rate relative to direct (higher is better; 1 = no load balancer)",
            "median of per-repetition ratios, bars: min–max",
        ),
        Metric::P99 => (
            "p99 latency per operation, µs (lower is better)",
            "median over repetitions, bars: min–max",
        ),
    };
    let root = root.titled(&format!("{prefix}{title} — {sub}"), ("sans-serif", 16))?;
    let (charts, legend) = root.split_vertically(H as i32 - 60);
    let kinds: Vec<&(Kind, &str, &str)> = KINDS
        .iter()
        .filter(|k| rows.iter().any(|d| d.kind == k.0))
        .collect();
    let panels = charts.split_evenly((1, kinds.len().max(1)));
    let mut items: Vec<LegendItem> = modes_of
        .iter()
        .filter(|(m, _)| rows.iter().any(|d| d.mode == *m))
        .map(|(m, _)| (mode_style(*m).1.to_string(), mode_style(*m).0, false))
        .collect();
    if let Metric::RateRatio = metric {
        items.push((
            format!("socklb target: {} × direct", targets::RATE_MIN),
            TARGET_COLOR,
            true,
        ));
    }
    legend_strip(&legend, &items)?;
    for (area, (kind, title, _)) in panels.iter().zip(kinds) {
        let pick = |d: &DatapathRow| -> Sp {
            match metric {
                Metric::RateRatio => Sp::from(&d.ratio_ops_per_s),
                Metric::P99 => Sp::from(&d.p99_us),
            }
        };
        let mine: Vec<&DatapathRow> = rows.iter().filter(|d| d.kind == *kind).collect();
        let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
        for d in &mine {
            let x = pick(d);
            for v in [x.min, x.max, x.median] {
                if v.is_finite() {
                    lo = lo.min(v);
                    hi = hi.max(v);
                }
            }
        }
        if !lo.is_finite() {
            continue;
        }
        let (y0, y1) = match metric {
            Metric::RateRatio => ((lo.min(0.9) - 0.05).max(0.0), hi.max(1.05) + 0.05),
            Metric::P99 => (0.0, hi * 1.12),
        };
        let xn = ns.len() as f64;
        let mut chart = ChartBuilder::on(area)
            .caption(*title, ("sans-serif", 15))
            .margin(10)
            .x_label_area_size(34)
            .y_label_area_size(52)
            .build_cartesian_2d(-0.5f64..xn - 0.5, y0..y1)?;
        let labels = ns.clone();
        chart
            .configure_mesh()
            .x_labels(ns.len())
            .x_label_formatter(&|x| {
                let i = x.round();
                if (x - i).abs() < 0.01 && i >= 0.0 {
                    labels
                        .get(i as usize)
                        .map(|n| count(*n))
                        .unwrap_or_default()
                } else {
                    String::new()
                }
            })
            .x_desc("services")
            .y_desc(match metric {
                Metric::RateRatio => "× direct",
                Metric::P99 => "µs",
            })
            .light_line_style(WHITE.mix(0.0))
            .draw()?;
        if let Metric::RateRatio = metric {
            let t = targets::RATE_MIN;
            chart.draw_series(DashedLineSeries::new(
                vec![(-0.5, t), (xn - 0.5, t)],
                8,
                6,
                TARGET_COLOR.stroke_width(1),
            ))?;
        }
        let modes: Vec<Mode> = modes_of
            .iter()
            .map(|m| m.0)
            .filter(|m| mine.iter().any(|d| d.mode == *m))
            .collect();
        let count = modes.len() as f64;
        for (mi, mode) in modes.iter().enumerate() {
            let (color, _) = mode_style(*mode);
            let offset = (mi as f64 - (count - 1.0) / 2.0) * 0.06;
            let pts: Vec<(f64, Sp)> = ns
                .iter()
                .enumerate()
                .filter_map(|(i, n)| {
                    mine.iter()
                        .find(|d| d.services == *n && d.mode == *mode)
                        .map(|d| (i as f64 + offset, pick(d)))
                })
                .filter(|(_, x)| x.median.is_finite())
                .collect();
            draw_with_bars(&mut chart, &pts, color, false)?;
        }
    }
    root.present()?;
    Ok(())
}

fn draw_with_bars(
    chart: &mut Panel<'_, '_>,
    pts: &[(f64, Sp)],
    color: RGBColor,
    dashed: bool,
) -> Result<()> {
    let line = pts.iter().map(|(x, v)| (*x, v.median));
    if dashed {
        chart.draw_series(DashedLineSeries::new(line, 8, 5, color.stroke_width(2)))?;
    } else {
        chart.draw_series(LineSeries::new(line, color.stroke_width(2)))?;
    }
    chart.draw_series(
        pts.iter()
            .filter(|(_, v)| v.min.is_finite() && v.max.is_finite())
            .map(|(x, v)| {
                ErrorBar::new_vertical(*x, v.min, v.median, v.max, color.stroke_width(1), 8)
            }),
    )?;
    chart.draw_series(
        pts.iter()
            .map(|(x, v)| Circle::new((*x, v.median), 3, color.filled())),
    )?;
    Ok(())
}

type LogPanel<'a, 'b> = ChartContext<
    'a,
    SVGBackend<'b>,
    Cartesian2d<
        plotters::coord::types::RangedCoordf64,
        plotters::coord::combinators::LogCoord<f64>,
    >,
>;

fn draw_log_series(
    chart: &mut LogPanel<'_, '_>,
    pts: &[(f64, Sp)],
    color: RGBColor,
    dashed: bool,
) -> Result<()> {
    let line = pts.iter().map(|(x, v)| (*x, v.median));
    if dashed {
        chart.draw_series(DashedLineSeries::new(line, 8, 5, color.stroke_width(2)))?;
    } else {
        chart.draw_series(LineSeries::new(line, color.stroke_width(2)))?;
    }
    chart.draw_series(
        pts.iter()
            .filter(|(_, v)| v.min.is_finite() && v.max.is_finite() && v.min > 0.0)
            .map(|(x, v)| {
                ErrorBar::new_vertical(*x, v.min, v.median, v.max, color.stroke_width(1), 8)
            }),
    )?;
    chart.draw_series(
        pts.iter()
            .map(|(x, v)| Circle::new((*x, v.median), 3, color.filled())),
    )?;
    Ok(())
}

/// A control-plane row, placed on the x axis by its service count.
trait AtServices {
    fn services(&self) -> usize;
}

macro_rules! at_services {
    ($($t:ty),*) => {
        $(impl AtServices for $t {
            fn services(&self) -> usize {
                self.services
            }
        })*
    };
}
at_services!(SocklbControlRow, IptablesRow, NftRow, AgentChangeRow);

pub(super) fn control_plane(r: &Results, file: &Path) -> Result<()> {
    let socklb = r.socklb_control_rows();
    let ipt = &r.control_plane.iptables;
    let nft = &r.control_plane.nft;
    let agent = &r.control_plane.agent;
    let mut ns: Vec<usize> = socklb
        .iter()
        .map(|x| x.services)
        .chain(ipt.iter().map(|x| x.services))
        .chain(nft.iter().map(|x| x.services))
        .collect();
    ns.sort_unstable();
    ns.dedup();
    let xi = |n: usize| ns.iter().position(|m| *m == n).map_or(0.0, |i| i as f64);
    let root = SVGBackend::new(file, (W, H)).into_drawing_area();
    root.fill(&WHITE)?;
    let root = root.titled(
        "Control plane, milliseconds (log scale; lower is better) — median, bars: min–max",
        ("sans-serif", 16),
    )?;
    let panels = root.split_evenly((1, 2));

    // Left: cold programming. Right: one endpoint change.
    type Series = (String, RGBColor, bool, Vec<(f64, Sp)>);
    let mut cold: Vec<Series> = Vec::new();
    let mut change: Vec<Series> = Vec::new();
    fn by<'a, T: AtServices + 'a>(
        rows: impl IntoIterator<Item = &'a T>,
        xi: &dyn Fn(usize) -> f64,
        f: impl Fn(&T) -> Sp,
    ) -> Vec<(f64, Sp)> {
        rows.into_iter()
            .map(|x| (xi(x.services()), f(x)))
            .filter(|(_, v)| v.median.is_finite() && v.median > 0.0)
            .collect()
    }
    let kernel = || socklb.iter().filter(|x| x.maps == Maps::Kernel);
    let memory = || socklb.iter().filter(|x| x.maps == Maps::Memory);
    let backend = |b: IptablesBackend| ipt.iter().filter(move |x| x.backend == b);
    let (legacy, ipt_nft) = (IptablesBackend::Legacy, IptablesBackend::Nft);
    let blue = RGBColor(31, 119, 180);
    cold.push((
        "socklb, BPF maps".into(),
        blue,
        false,
        by(kernel(), &xi, |x| Sp::from(&x.cold_ms)),
    ));
    cold.push((
        "socklb, in-memory twin".into(),
        blue,
        true,
        by(memory(), &xi, |x| Sp::from(&x.cold_ms)),
    ));
    cold.push((
        legacy.restore().into(),
        RGBColor(214, 39, 40),
        false,
        by(backend(legacy), &xi, |x| Sp::from(&x.cold_ms)),
    ));
    cold.push((
        ipt_nft.restore().into(),
        RGBColor(255, 127, 14),
        false,
        by(backend(ipt_nft), &xi, |x| Sp::from(&x.cold_ms)),
    ));
    cold.push((
        "nft -f".into(),
        RGBColor(44, 160, 44),
        false,
        by(nft, &xi, |x| Sp::from(&x.cold_ms)),
    ));
    change.push((
        "socklb p99, BPF maps".into(),
        blue,
        false,
        by(kernel(), &xi, |x| Sp::single(x.change.p99_us / 1000.0)),
    ));
    change.push((
        "socklb agent, manifest dir (snapshot -> maps)".into(),
        blue,
        true,
        by(agent, &xi, |x| Sp::from(&x.latency_us).scaled(0.001)),
    ));
    change.push((
        "iptables full sync (legacy)".into(),
        RGBColor(214, 39, 40),
        true,
        by(backend(legacy), &xi, |x| Sp::from(&x.full_sync_ms)),
    ));
    change.push((
        "iptables partial sync (legacy)".into(),
        RGBColor(214, 39, 40),
        false,
        by(backend(legacy), &xi, |x| Sp::from(&x.partial_sync_ms)),
    ));
    change.push((
        "iptables partial sync (nft)".into(),
        RGBColor(255, 127, 14),
        false,
        by(backend(ipt_nft), &xi, |x| Sp::from(&x.partial_sync_ms)),
    ));
    change.push((
        "nft transaction".into(),
        RGBColor(44, 160, 44),
        false,
        by(nft, &xi, |x| Sp::from(&x.change_ms)),
    ));

    for (panel, (title, series)) in panels.iter().zip([
        ("Cold: N services × 10 endpoints programmed", cold),
        ("One endpoint changed", change),
    ]) {
        let series: Vec<Series> = series.into_iter().filter(|s| !s.3.is_empty()).collect();
        let (area, legend) = panel.split_vertically(panel.dim_in_pixel().1 as i32 - 64);
        legend_strip(
            &legend,
            &series
                .iter()
                .map(|(l, c, d, _)| (l.clone(), *c, *d))
                .collect::<Vec<_>>(),
        )?;
        let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
        for (_, _, _, pts) in &series {
            for (_, v) in pts {
                for x in [v.min, v.median, v.max] {
                    if x.is_finite() && x > 0.0 {
                        lo = lo.min(x);
                        hi = hi.max(x);
                    }
                }
            }
        }
        if !lo.is_finite() {
            continue;
        }
        let (lo, hi) = (
            10f64.powf(lo.log10().floor()),
            10f64.powf(hi.log10().ceil()).max(hi * 3.0),
        );
        let xn = ns.len() as f64;
        let mut chart = ChartBuilder::on(&area)
            .caption(title, ("sans-serif", 15))
            .margin(10)
            .x_label_area_size(34)
            .y_label_area_size(60)
            .build_cartesian_2d(-0.5f64..xn - 0.5, (lo..hi).log_scale())?;
        let labels = ns.clone();
        chart
            .configure_mesh()
            .x_labels(ns.len())
            .x_label_formatter(&|x| {
                let i = x.round();
                if (x - i).abs() < 0.01 && i >= 0.0 {
                    labels
                        .get(i as usize)
                        .map(|n| count(*n))
                        .unwrap_or_default()
                } else {
                    String::new()
                }
            })
            .y_label_formatter(&|y| if *y >= 1.0 { fmt(*y) } else { format!("{y}") })
            .x_desc("services")
            .y_desc("ms")
            .light_line_style(WHITE.mix(0.0))
            .draw()?;
        for (_, color, dashed, pts) in &series {
            draw_log_series(&mut chart, pts, *color, *dashed)?;
        }
    }
    root.present()?;
    Ok(())
}

pub(super) fn memory(rows: &[MemoryRow], file: &Path) -> Result<()> {
    let ns: Vec<usize> = rows.iter().map(|x| x.services).collect();
    let root = SVGBackend::new(file, (W / 2 + 100, H)).into_drawing_area();
    root.fill(&WHITE)?;
    let root = root.titled(
        "socklb agent memory, MiB — median, bars: min–max",
        ("sans-serif", 16),
    )?;
    let (root, legend) = root.split_vertically(H as i32 - 60);
    let target = TARGET_COLOR;
    type Figure = fn(&MemoryRow) -> &Spread;
    let series: [(Figure, &str, RGBColor, bool); 3] = [
        (
            |x| &x.rss_mib,
            "agent RSS after ready",
            RGBColor(31, 119, 180),
            false,
        ),
        (
            |x| &x.hwm_mib,
            "agent peak RSS",
            RGBColor(148, 103, 189),
            false,
        ),
        (
            |x| &x.bpf_maps_mib,
            "BPF maps (memlock)",
            RGBColor(127, 127, 127),
            true,
        ),
    ];
    let mut items: Vec<LegendItem> = series
        .iter()
        .map(|(_, l, c, d)| (l.to_string(), *c, *d))
        .collect();
    items.push((
        format!("RSS target: {} MiB", targets::RSS_MAX_MIB),
        target,
        true,
    ));
    legend_strip(&legend, &items)?;
    let mut hi: f64 = targets::RSS_MAX_MIB;
    for x in rows {
        for (figure, ..) in &series {
            hi = hi.max(figure(x).max);
        }
    }
    let xn = ns.len() as f64;
    let mut chart = ChartBuilder::on(&root)
        .margin(12)
        .x_label_area_size(34)
        .y_label_area_size(52)
        .build_cartesian_2d(-0.5f64..xn - 0.5, 0.0..hi * 1.15)?;
    let labels = ns.clone();
    chart
        .configure_mesh()
        .x_labels(ns.len())
        .x_label_formatter(&|x| {
            let i = x.round();
            if (x - i).abs() < 0.01 && i >= 0.0 {
                labels
                    .get(i as usize)
                    .map(|n| count(*n))
                    .unwrap_or_default()
            } else {
                String::new()
            }
        })
        .x_desc("services (× 10 endpoints)")
        .y_desc("MiB")
        .light_line_style(WHITE.mix(0.0))
        .draw()?;
    chart.draw_series(DashedLineSeries::new(
        vec![
            (-0.5, targets::RSS_MAX_MIB),
            (xn - 0.5, targets::RSS_MAX_MIB),
        ],
        8,
        6,
        target.stroke_width(1),
    ))?;
    for (figure, _, color, dashed) in series {
        let pts: Vec<(f64, Sp)> = rows
            .iter()
            .enumerate()
            .map(|(i, x)| (i as f64, Sp::from(figure(x))))
            .filter(|(_, v)| v.median.is_finite())
            .collect();
        draw_with_bars(&mut chart, &pts, color, dashed)?;
    }
    root.present()?;
    Ok(())
}
