//! Markdown tables, the machine's description, and the generated section of
//! docs/performance.md.

use std::path::Path;
use std::process::Command;

use super::procfs::meminfo_kib;

pub const BEGIN: &str = "<!-- bench:begin -->";
pub const END: &str = "<!-- bench:end -->";

pub fn fmt_ms(ms: f64) -> String {
    if ms < 10.0 {
        format!("{ms:.2} ms")
    } else {
        format!("{ms:.0} ms")
    }
}

pub fn fmt_mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

/// A Markdown table, padded so that it also reads well on a terminal.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Table {
    pub headers: Vec<String>,
    pub rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new<const N: usize>(headers: [&str; N]) -> Self {
        Self {
            headers: headers.iter().map(|h| h.to_string()).collect(),
            rows: Vec::new(),
        }
    }

    /// Adds a row; missing cells are left empty, extra ones dropped.
    pub fn row(&mut self, cells: impl IntoIterator<Item = impl Into<String>>) {
        let mut row: Vec<String> = cells.into_iter().map(Into::into).collect();
        row.resize(self.headers.len(), String::new());
        self.rows.push(row);
    }

    pub fn render(&self) -> String {
        let escape = |s: &str| s.replace('|', "\\|").replace('\n', " ");
        let widths: Vec<usize> = (0..self.headers.len())
            .map(|i| {
                std::iter::once(&self.headers[i])
                    .chain(self.rows.iter().map(|r| &r[i]))
                    .map(|c| escape(c).chars().count())
                    .max()
                    .unwrap_or(0)
                    .max(3)
            })
            .collect();
        let line = |cells: &[String]| {
            let padded: Vec<String> = cells
                .iter()
                .zip(&widths)
                .map(|(c, w)| {
                    let c = escape(c);
                    let pad = w - c.chars().count();
                    format!("{c}{}", " ".repeat(pad))
                })
                .collect();
            format!("| {} |\n", padded.join(" | "))
        };
        let mut out = line(&self.headers);
        let rules: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
        out.push_str(&line(&rules));
        for row in &self.rows {
            out.push_str(&line(row));
        }
        out
    }
}

/// Replaces what lies between the markers with `generated`, keeping everything else;
/// without markers, appends them with `generated` at the end.
pub fn replace_generated(doc: &str, generated: &str) -> String {
    let generated = generated.trim_end();
    // Markers count only as whole lines: the page's prose names them too.
    let line_at = |marker: &str, from: usize| -> Option<usize> {
        let mut offset = from;
        for line in doc[from..].split_inclusive('\n') {
            if line.trim_end() == marker {
                return Some(offset);
            }
            offset += line.len();
        }
        None
    };
    if let Some(begin) = line_at(BEGIN, 0)
        && let Some(end) = line_at(END, begin)
    {
        return format!(
            "{}\n{generated}\n{}",
            &doc[..begin + BEGIN.len()],
            &doc[end..]
        );
    }
    format!("{}\n\n{BEGIN}\n{generated}\n{END}\n", doc.trim_end())
}

/// Writes `generated` into the document at `path` between the markers.
pub fn write_doc(path: &Path, generated: &str) -> Result<(), String> {
    let doc = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    std::fs::write(path, replace_generated(&doc, generated))
        .map_err(|e| format!("{}: {e}", path.display()))
}

fn first_line(program: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(program).args(args).output().ok()?;
    let text = if out.stdout.is_empty() {
        out.stderr
    } else {
        out.stdout
    };
    String::from_utf8_lossy(&text)
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.contains(": [:"))
        .map(str::to_owned)
}

/// CPU model and count, memory, kernel, Debian, Xvnc and Chromium versions, build.
pub fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cores = cpuinfo
        .lines()
        .filter(|l| l.starts_with("processor"))
        .count();
    let model = cpuinfo
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")?
                .split_once(':')
                .map(|(_, m)| m.trim())
        })
        .unwrap_or("unknown CPU");
    let mem = meminfo_kib("MemTotal").map_or("unknown".into(), |k| {
        format!("{:.1} GiB", k as f64 / 1024.0 / 1024.0)
    });
    let read = |p: &str| {
        std::fs::read_to_string(p)
            .unwrap_or_default()
            .trim()
            .to_owned()
    };
    let env = |k: &str, d: &str| std::env::var(k).unwrap_or_else(|_| d.to_owned());
    let xvnc = first_line(&env("LIVESESSION_XVNC", "Xvnc"), &["-version"])
        .map(|l| l.split(" - built").next().unwrap_or(&l).to_owned())
        .unwrap_or_else(|| "Xvnc not found".into());
    let chromium = first_line(&env("LIVESESSION_CHROMIUM", "chromium"), &["--version"])
        .map(|l| l.split(" built on").next().unwrap_or(&l).to_owned())
        .unwrap_or_else(|| "Chromium not found".into());
    let commit = first_line("git", &["rev-parse", "--short", "HEAD"]).map(|c| {
        let dirty = Command::new("git")
            // The document this run writes does not count.
            .args(["status", "--porcelain", "--untracked-files=no", "--", "."])
            .arg(":!docs/performance.md")
            .output()
            .is_ok_and(|o| !o.stdout.is_empty());
        format!(
            ", commit {c}{}",
            if dirty { " + uncommitted changes" } else { "" }
        )
    });
    format!(
        "{cores} × {model}, {mem} RAM; Linux {}; Debian {}; {xvnc}; {chromium}; {} build{}",
        read("/proc/sys/kernel/osrelease"),
        read("/etc/debian_version"),
        if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        },
        commit.unwrap_or_default()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_are_padded_and_escaped() {
        let mut t = Table::new(["A", "Long header"]);
        t.row(["x|y", "1"]);
        t.row(["only one"]);
        assert_eq!(
            t.render(),
            "| A        | Long header |\n\
             | -------- | ----------- |\n\
             | x\\|y     | 1           |\n\
             | only one |             |\n"
        );
    }

    #[test]
    fn the_generated_section_replaces_only_what_lies_between_the_markers() {
        let doc = format!("# Title\n\nHand-written.\n\n{BEGIN}\nold table\n{END}\n\nAfter.\n");
        let new = replace_generated(&doc, "new table\n");
        assert_eq!(
            new,
            format!("# Title\n\nHand-written.\n\n{BEGIN}\nnew table\n{END}\n\nAfter.\n")
        );
        // Idempotent: replacing again changes nothing.
        assert_eq!(replace_generated(&new, "new table"), new);
        // Markers named in prose (inside a line) are not markers.
        let prose = format!("Writes between `{BEGIN}` and `{END}`.\n\n{BEGIN}\nold\n{END}\n");
        assert_eq!(
            replace_generated(&prose, "new"),
            format!("Writes between `{BEGIN}` and `{END}`.\n\n{BEGIN}\nnew\n{END}\n")
        );
    }

    #[test]
    fn without_markers_the_section_is_appended() {
        let new = replace_generated("# Title\n\nText.\n\n", "table");
        assert_eq!(new, format!("# Title\n\nText.\n\n{BEGIN}\ntable\n{END}\n"));
        // An end marker before the begin marker does not count.
        let odd = format!("{END}\n{BEGIN}\n");
        assert!(replace_generated(&odd, "t").ends_with(&format!("{BEGIN}\nt\n{END}\n")));
    }

    #[test]
    fn milliseconds_and_mebibytes_read_naturally() {
        assert_eq!(fmt_ms(2.345), "2.35 ms");
        assert_eq!(fmt_ms(612.4), "612 ms");
        assert_eq!(fmt_mib(2048), "2.0 MiB");
    }
}
