//! The metric names a PromQL expression reads, for checking alert rules and
//! dashboards against what the processes export. A tokenizer, not a parser:
//! label matchers (`{...}`), ranges (`[...]`), strings, numbers, durations,
//! Grafana variables (`$x`, `${x}`), keywords, aggregation operators,
//! functions (a name followed by `(`) and the label lists of `by`,
//! `without`, `on`, `ignoring`, `group_left` and `group_right` are skipped;
//! every other identifier is a metric name.

use std::collections::BTreeSet;

/// Keywords followed by a parenthesized list of label names.
const LABEL_LIST_KEYWORDS: [&str; 6] = [
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];

/// Binary operators and modifiers spelled as words.
const WORD_OPERATORS: [&str; 6] = ["and", "or", "unless", "bool", "offset", "atan2"];

/// Aggregation operators, which may be followed by `by (...)` before their `(`.
const AGGREGATIONS: [&str; 14] = [
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
    "limitk",
    "limit_ratio",
];

/// Every metric name `expr` reads.
pub fn metric_names(expr: &str) -> BTreeSet<String> {
    let chars: Vec<char> = expr.chars().collect();
    let mut names = BTreeSet::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        match c {
            '"' | '\'' | '`' => i = skip_string(&chars, i),
            '{' => i = skip_group(&chars, i, '{', '}'),
            '[' => i = skip_group(&chars, i, '[', ']'),
            '#' => i = skip_while(&chars, i, |c| c != '\n'),
            '$' => {
                i += 1;
                if chars.get(i) == Some(&'{') {
                    i = skip_group(&chars, i, '{', '}');
                } else {
                    i = skip_while(&chars, i, is_name_char);
                }
            }
            c if c.is_ascii_digit()
                || (c == '.' && chars.get(i + 1).is_some_and(char::is_ascii_digit)) =>
            {
                i = skip_while(&chars, i, |c| c.is_ascii_alphanumeric() || c == '.');
            }
            c if c.is_ascii_alphabetic() || c == '_' || c == ':' => {
                let end = skip_while(&chars, i, is_name_char);
                let word: String = chars[i..end].iter().collect();
                let next = skip_while(&chars, end, char::is_whitespace);
                i = end;
                let lower = word.to_ascii_lowercase();
                if LABEL_LIST_KEYWORDS.contains(&lower.as_str()) {
                    if chars.get(next) == Some(&'(') {
                        i = skip_group(&chars, next, '(', ')');
                    }
                } else if WORD_OPERATORS.contains(&lower.as_str())
                    || AGGREGATIONS.contains(&lower.as_str())
                    || chars.get(next) == Some(&'(')
                {
                    // An operator, an aggregation or a function call.
                } else {
                    names.insert(word);
                }
            }
            _ => i += 1,
        }
    }
    names
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == ':'
}

fn skip_while(chars: &[char], mut i: usize, keep: impl Fn(char) -> bool) -> usize {
    while i < chars.len() && keep(chars[i]) {
        i += 1;
    }
    i
}

/// The index after the string literal opening at `i`.
fn skip_string(chars: &[char], i: usize) -> usize {
    let quote = chars[i];
    let mut j = i + 1;
    while j < chars.len() {
        match chars[j] {
            '\\' if quote != '`' => j += 2,
            c if c == quote => return j + 1,
            _ => j += 1,
        }
    }
    chars.len()
}

/// The index after the group opening with `open` at `i` (strings inside
/// may hold the closing character).
fn skip_group(chars: &[char], i: usize, open: char, close: char) -> usize {
    let mut depth = 0;
    let mut j = i;
    while j < chars.len() {
        match chars[j] {
            '"' | '\'' | '`' => {
                j = skip_string(chars, j);
                continue;
            }
            c if c == open => depth += 1,
            c if c == close => {
                depth -= 1;
                if depth == 0 {
                    return j + 1;
                }
            }
            _ => {}
        }
        j += 1;
    }
    chars.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(expr: &str) -> Vec<String> {
        metric_names(expr).into_iter().collect()
    }

    #[test]
    fn metric_names_are_found_and_everything_else_skipped() {
        assert_eq!(
            names(
                r#"histogram_quantile(0.99, sum by (le, route) (rate(gateway_request_duration_seconds_bucket{namespace=~"$namespace", route!="}x{"}[$__rate_interval])))"#
            ),
            ["gateway_request_duration_seconds_bucket"]
        );
        assert_eq!(
            names(
                "gateway_config_version\n  < on (namespace) group_left ()\nmax by (namespace) (gateway_config_version offset 10m)"
            ),
            ["gateway_config_version"]
        );
        assert_eq!(
            names(
                r#"gateway_control_plane_connected == 0 unless on (instance) gateway_config_source{source="file"} == 1"#
            ),
            ["gateway_config_source", "gateway_control_plane_connected"]
        );
        assert_eq!(
            names("sum by (namespace) (control_plane_leader) == 0 or absent(control_plane_leader)"),
            ["control_plane_leader"]
        );
        assert_eq!(
            names(
                "sum without (pod) (rate(a_total[5m])) / ignoring (x) b:recorded * 1e3 and bool c"
            ),
            ["a_total", "b:recorded", "c"]
        );
        assert_eq!(names("max(x) by (service) > 0.5"), ["x"]);
        assert!(names(r#"vector(1) + time() - scalar(y{a='b\'c'})"#) == ["y"]);
        assert!(names("").is_empty());
    }
}
