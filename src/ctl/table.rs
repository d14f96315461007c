//! A tiny text table: columns padded to their widest cell, two spaces
//! apart, no trailing blanks. Cells are cleaned of control characters so
//! that a value from the API cannot break the layout or the terminal.

/// Rows of cells under an optional header.
#[derive(Debug, Default)]
pub struct Table {
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table whose first row is `header` (none if empty).
    pub fn new(header: &[&str]) -> Self {
        let mut table = Table::default();
        if !header.is_empty() {
            table.row(header.iter().map(|h| h.to_string()).collect());
        }
        table
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells.iter().map(|c| clean(c)).collect());
    }

    /// The table as text, one line per row, each ending in a newline.
    pub fn render(&self) -> String {
        let widths = self.widths();
        let mut out = String::new();
        for row in &self.rows {
            let mut line = String::new();
            for (i, cell) in row.iter().enumerate() {
                if i > 0 {
                    line.push_str("  ");
                }
                line.push_str(cell);
                let pad = widths[i].saturating_sub(cell.chars().count());
                line.extend(std::iter::repeat_n(' ', pad));
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }

    fn widths(&self) -> Vec<usize> {
        let mut widths = Vec::new();
        for row in &self.rows {
            for (i, cell) in row.iter().enumerate() {
                let w = cell.chars().count();
                match widths.get_mut(i) {
                    Some(max) if *max < w => *max = w,
                    Some(_) => {}
                    None => widths.push(w),
                }
            }
        }
        widths
    }
}

/// `s` on one line: tabs and line breaks become spaces, other control
/// characters (escape sequences) become `?`.
pub fn clean(s: &str) -> String {
    s.chars()
        .map(|c| match c {
            '\t' | '\n' | '\r' => ' ',
            c if c.is_control() => '?',
            c => c,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_are_aligned_without_trailing_blanks() {
        let mut t = Table::new(&["ID", "ADDRESS", "ROUTE"]);
        t.row(vec!["7".into(), "a@pec.example".into(), "legacy".into()]);
        t.row(vec!["12".into(), "bob@pec.example".into(), "new".into()]);
        assert_eq!(
            t.render(),
            "ID  ADDRESS          ROUTE\n\
             7   a@pec.example    legacy\n\
             12  bob@pec.example  new\n"
        );
    }

    #[test]
    fn widths_count_characters_not_bytes() {
        let mut t = Table::new(&[]);
        t.row(vec!["città".into(), "x".into()]);
        t.row(vec!["roma".into(), "y".into()]);
        assert_eq!(t.render(), "città  x\nroma   y\n");
    }

    #[test]
    fn a_header_alone_and_ragged_rows() {
        assert_eq!(Table::new(&["A", "B"]).render(), "A  B\n");
        let mut t = Table::new(&["A", "B"]);
        t.row(vec!["long".into()]);
        assert_eq!(t.render(), "A     B\nlong\n");
        assert_eq!(Table::new(&[]).render(), "");
    }

    #[test]
    fn control_characters_cannot_break_the_layout() {
        let mut t = Table::new(&["NOTICE", "X"]);
        t.row(vec!["two\nlines\x1b[31m".into(), "x".into()]);
        assert_eq!(t.render(), "NOTICE          X\ntwo lines?[31m  x\n");
        assert_eq!(clean("a\tb\u{9b}c"), "a b?c");
    }
}
