//! Reads clap's `--help` text: the entries of its Commands, Arguments and
//! Options sections and whether each one has a description.

/// One entry of a help text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Section it is in (`Commands`, `Arguments`, `Options`).
    pub section: String,
    /// The entry as written (`-o, --output <OUTPUT>`, `apply`).
    pub spec: String,
    /// Whether a description follows it (on the same line or the next).
    pub described: bool,
}

/// Lines such as `[env: X=]` or `[default: 1]` are not descriptions.
fn is_description(text: &str) -> bool {
    let text = text.trim();
    !text.is_empty() && !text.starts_with('[')
}

fn indentation(line: &str) -> usize {
    line.len() - line.trim_start().len()
}

/// The entries of `help`.
pub fn entries(help: &str) -> Vec<Entry> {
    let lines: Vec<&str> = help.lines().collect();
    let mut section = String::new();
    let mut found = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        if !line.starts_with(' ') && line.ends_with(':') {
            section = line.trim_end_matches(':').to_string();
            continue;
        }
        if !matches!(section.as_str(), "Commands" | "Arguments" | "Options") {
            continue;
        }
        let indent = indentation(line);
        let text = line.trim_start();
        let starts_entry = match section.as_str() {
            "Commands" => indent == 2 && !text.is_empty(),
            _ => (2..=6).contains(&indent) && text.starts_with(['-', '<', '[']),
        };
        if !starts_entry {
            continue;
        }
        let (spec, same_line) = match text.split_once("  ") {
            Some((spec, rest)) => (spec.trim(), rest),
            None => (text.trim(), ""),
        };
        let next_line = lines
            .get(i + 1)
            .filter(|next| indentation(next) > indent + 2)
            .copied()
            .unwrap_or("");
        found.push(Entry {
            section: section.clone(),
            spec: spec.to_string(),
            described: is_description(same_line) || is_description(next_line),
        });
    }
    found
}

/// The entries of `help` without a description.
pub fn undescribed(help: &str) -> Vec<String> {
    entries(help)
        .into_iter()
        .filter(|e| !e.described)
        .map(|e| format!("{}: {}", e.section, e.spec))
        .collect()
}

/// The subcommands a help text lists (without `help`).
pub fn subcommands(help: &str) -> Vec<String> {
    entries(help)
        .into_iter()
        .filter(|e| e.section == "Commands" && e.spec != "help")
        .map(|e| e.spec)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHORT: &str = "Usage: x [OPTIONS] <COMMAND>

Commands:
  apply  Apply a file
  bare
  help   Print this message

Arguments:
  <ID>  Id of the instance

Options:
  -o, --output <OUTPUT>  Output format [default: table]
      --quiet
      --level <LEVEL>    [env: LOG_LEVEL=] [default: info]
  -h, --help             Print help
";

    const LONG: &str = "Usage: x [OPTIONS]

Options:
      --listen <ADDR>
          Public listener
          
          [env: GW_LISTEN=]

      --port <PORT>
          [env: PORT=]

  -h, --help
          Print help (see a summary with '-h')
";

    #[test]
    fn entries_on_one_line() {
        assert_eq!(
            undescribed(SHORT),
            [
                "Commands: bare",
                "Options: --quiet",
                "Options: --level <LEVEL>"
            ]
        );
        assert_eq!(subcommands(SHORT), ["apply", "bare"]);
        assert_eq!(entries(SHORT).len(), 8);
    }

    #[test]
    fn entries_with_the_description_below() {
        assert_eq!(undescribed(LONG), ["Options: --port <PORT>"]);
        assert_eq!(entries(LONG).len(), 3);
    }
}
