//! A plain-text table with left-aligned, space-padded columns: what the
//! human renderings of both reports print. No borders and no colour, so the
//! output stays readable in logs, `less` and issue comments.

/// Rows of cells rendered as aligned columns.
pub(crate) struct Table {
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table whose first row is the header.
    pub(crate) fn new(header: &[&str]) -> Self {
        Table {
            rows: vec![header.iter().map(|s| (*s).to_owned()).collect()],
        }
    }

    /// Appends a row; missing trailing cells render empty.
    pub(crate) fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    /// The table as lines separated by `\n`, each indented by `indent`
    /// spaces, trailing spaces trimmed.
    pub(crate) fn render(&self, indent: usize) -> String {
        let columns = self.rows.iter().map(Vec::len).max().unwrap_or(0);
        let widths: Vec<usize> = (0..columns)
            .map(|c| {
                self.rows
                    .iter()
                    .filter_map(|r| r.get(c))
                    .map(|s| s.chars().count())
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let mut out = String::new();
        for row in &self.rows {
            let mut line = " ".repeat(indent);
            for (c, width) in widths.iter().enumerate() {
                let cell = row.get(c).map(String::as_str).unwrap_or("");
                line.push_str(cell);
                let pad = width.saturating_sub(cell.chars().count()) + 2;
                line.push_str(&" ".repeat(pad));
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_align() {
        let mut t = Table::new(&["a", "bb"]);
        t.row(vec!["ccc".into(), "d".into()]);
        t.row(vec!["e".into()]);
        assert_eq!(t.render(1), " a    bb\n ccc  d\n e\n");
    }
}
