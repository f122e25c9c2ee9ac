//! Plain-text tables for the CLI: every column as wide as its widest cell,
//! two spaces between columns, no trailing spaces.

/// Renders `header` and `rows` (each as long as `header`).
pub fn render(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut l = String::new();
        for (i, (cell, w)) in cells.zip(&widths).enumerate() {
            if i > 0 {
                l.push_str("  ");
            }
            l.push_str(cell);
            l.extend(std::iter::repeat_n(' ', w - cell.chars().count()));
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line(&mut header.iter().copied());
    for row in rows {
        line(&mut row.iter().map(String::as_str));
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn columns_fit_their_widest_cell() {
        let t = super::render(
            &["NAME", "N"],
            &[
                vec!["a-very-long-bridge-name".into(), "1".into()],
                vec!["b".into(), "22".into()],
            ],
        );
        assert_eq!(
            t,
            "NAME                     N\na-very-long-bridge-name  1\nb                        22\n"
        );
    }
}
