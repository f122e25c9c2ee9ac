//! The benchmark's small SVG charts: side-by-side panels, each with one
//! line per arm on a logarithmic x axis (`bench.svg` and `control.svg`).

use std::fmt::Write as _;

use super::arms::Arm;

/// One line of a panel: the arm, its colour, its points (x, y).
pub type Line = (Arm, &'static str, Vec<(f64, f64)>);

/// The arms drawn, with their colours.
pub const ARMS: [(Arm, &str); 2] = [(Arm::Iptables, "#c0392b"), (Arm::Netpath, "#2471a3")];

/// Panels of (title, lines) side by side.
pub fn panels(panels: &[(String, Vec<Line>)]) -> String {
    let (w, h) = (420.0, 260.0);
    let mut s = format!(
        "<svg xmlns='http://www.w3.org/2000/svg' width='{}' height='{h}' font-family='sans-serif' font-size='11'>\n",
        w * panels.len() as f64
    );
    for (i, (label, lines)) in panels.iter().enumerate() {
        let x0 = i as f64 * w + 50.0;
        let (pw, ph) = (w - 80.0, h - 70.0);
        let all: Vec<(f64, f64)> = lines.iter().flat_map(|l| l.2.iter().copied()).collect();
        let ymax = all.iter().map(|p| p.1).fold(1.0, f64::max) * 1.15;
        let xmax = all.iter().map(|p| p.0).fold(1.0, f64::max).max(10.0);
        let px = |x: f64| x0 + (x.max(1.0).log10() / xmax.log10()) * pw;
        let py = |y: f64| 20.0 + ph - y / ymax * ph;
        let _ = writeln!(s, "<text x='{x0}' y='14'>{label}</text>");
        let _ = writeln!(
            s,
            "<line x1='{x0}' y1='{y}' x2='{}' y2='{y}' stroke='black'/>\n<line x1='{x0}' y1='20' x2='{x0}' y2='{y}' stroke='black'/>",
            x0 + pw,
            y = 20.0 + ph
        );
        let _ = writeln!(
            s,
            "<text x='{}' y='{}'>0</text><text x='{}' y='28'>{ymax:.0}</text>",
            x0 - 20.0,
            20.0 + ph,
            x0 - 45.0
        );
        for (k, (arm, color, pts)) in lines.iter().enumerate() {
            let path: Vec<String> = pts
                .iter()
                .map(|(x, y)| format!("{:.1},{:.1}", px(*x), py(*y)))
                .collect();
            let _ = writeln!(
                s,
                "<polyline fill='none' stroke='{color}' stroke-width='2' points='{}'/>",
                path.join(" ")
            );
            for (x, y) in pts {
                let _ = writeln!(
                    s,
                    "<circle cx='{:.1}' cy='{:.1}' r='3' fill='{color}'/>\n<text x='{:.1}' y='{}' text-anchor='middle'>{x}</text>",
                    px(*x),
                    py(*y),
                    px(*x),
                    35.0 + ph
                );
            }
            let _ = writeln!(
                s,
                "<text x='{}' y='{}' fill='{color}'>{}</text>",
                x0 + pw - 60.0,
                50.0 + 15.0 * k as f64,
                arm.name()
            );
        }
    }
    s.push_str("</svg>\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_polyline_per_arm_and_a_point_per_value() {
        let svg = panels(&[(
            "t".to_owned(),
            ARMS.iter()
                .map(|(a, c)| (*a, *c, vec![(1.0, 2.0), (100.0, 4.0)]))
                .collect(),
        )]);
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>\n"));
        assert_eq!(svg.matches("<polyline").count(), 2);
        assert_eq!(svg.matches("<circle").count(), 4);
        assert!(svg.contains(">iptables<") && svg.contains(">netpath<"));
    }
}
