//! Aligned text tables for the inspection commands (`socklb plan`, `socklb status`).

/// One line per row, columns padded to their widest cell and separated by two spaces;
/// the last column is not padded. Cells are counted in characters, not bytes.
pub fn render<const N: usize>(header: [&str; N], rows: &[[String; N]]) -> String {
    let mut widths = header.map(|h| h.chars().count());
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let header = header.map(str::to_owned);
    let mut out = String::new();
    for row in std::iter::once(&header).chain(rows) {
        let mut line = String::new();
        for (i, (cell, width)) in row.iter().zip(widths).enumerate() {
            if i + 1 == N {
                line.push_str(cell);
            } else {
                let pad = width.saturating_sub(cell.chars().count());
                line.push_str(cell);
                line.extend(std::iter::repeat_n(' ', pad + 2));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_align_on_the_widest_cell() {
        let rows = [
            ["a".to_owned(), "bbb".to_owned(), "x".to_owned()],
            ["ccccc".to_owned(), "d".to_owned(), "".to_owned()],
        ];
        assert_eq!(
            render(["H1", "H2", "H3"], &rows),
            "H1     H2   H3\na      bbb  x\nccccc  d\n"
        );
    }
}
