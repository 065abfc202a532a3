//! Deserialization that reports every unknown key, wrongly typed value and missing required
//! key, not just the first: serde stops at the first error, so after each one the entry it
//! points at is blanked out (every byte but newlines turned into a space, so offsets and
//! lines stay those of the original text) and the text is deserialized again.
//!
//! A `[[table]]` entry missing a required key is blanked out as a whole. When that key was
//! written but blanked out for an error of its own, the "missing field" that follows is not
//! reported a second time.

use std::ops::Range;

use toml_edit::{Document, Item, Key, Table, TableLike, Value};

use super::Config;
use super::error::{ConfigError, ConfigErrorKind};
use super::spans::line_start;

/// Bounds the deserialize-and-blank rounds, and so the errors reported this way.
const MAX_ROUNDS: usize = 100;

/// The outcome of [`deserialize_reporting_all`].
pub(super) struct Recovered {
    /// The config read once every offending entry was blanked, if that succeeded.
    pub config: Option<Config>,
    /// One error per offending entry, in the order serde met them.
    pub errors: Vec<ConfigError>,
    /// The text with every offending entry blanked out: `config` was read from it.
    pub text: String,
}

/// Deserializes syntactically valid TOML `text`, parsed as `document`, collecting every
/// serde error.
pub(super) fn deserialize_reporting_all(text: &str, document: &Document<&str>) -> Recovered {
    let mut working = text.to_owned();
    let mut errors = Vec::new();
    for _ in 0..MAX_ROUNDS {
        let err = match toml::from_str::<Config>(&working) {
            Ok(config) => {
                return Recovered { config: Some(config), errors, text: working };
            }
            Err(err) => err,
        };
        let offset = err.span().map(|span| span.start);
        if !offset.is_some_and(|offset| is_blanked_key(document, offset, err.message())) {
            let kind = ConfigErrorKind::Field { message: err.message().to_owned() };
            errors.push(ConfigError::at_offset(text, offset, kind));
        }
        match offset.and_then(|offset| blank_entry_at(&working, offset)) {
            Some(blanked) => working = blanked,
            None => break,
        }
    }
    Recovered { config: None, errors, text: working }
}

/// Whether `message` says a key is missing from the table at `offset` though the original
/// `document` has it there: the key was blanked out for an error already reported.
fn is_blanked_key(document: &Document<&str>, offset: usize, message: &str) -> bool {
    let Some(key) = message.strip_prefix("missing field `").and_then(|rest| rest.strip_suffix('`')) else {
        return false;
    };
    // Not the root table, which may start at offset 0 too.
    let table = document.as_table().iter().find_map(|(_, item)| table_at(item, offset));
    table.is_some_and(|table| table.contains_key(key))
}

/// The table, `[[table]]` entry or inline table within `item` that starts at `offset`.
fn table_at(item: &Item, offset: usize) -> Option<&dyn TableLike> {
    let starts_there = |span: Option<Range<usize>>| span.is_some_and(|span| span.start == offset);
    match item {
        Item::Table(table) => {
            if starts_there(table.span()) {
                return Some(table);
            }
            table.iter().find_map(|(_, child)| table_at(child, offset))
        }
        Item::ArrayOfTables(tables) => tables.iter().find_map(|table| {
            if starts_there(table.span()) {
                return Some(table as &dyn TableLike);
            }
            table.iter().find_map(|(_, child)| table_at(child, offset))
        }),
        Item::Value(value) => value_table_at(value, offset),
        Item::None => None,
    }
}

/// The inline table within `value` that starts at `offset`.
fn value_table_at(value: &Value, offset: usize) -> Option<&dyn TableLike> {
    match value {
        Value::InlineTable(table) => {
            if table.span().is_some_and(|span| span.start == offset) {
                return Some(table);
            }
            table.iter().find_map(|(_, child)| value_table_at(child, offset))
        }
        Value::Array(array) => array.iter().find_map(|element| value_table_at(element, offset)),
        _ => None,
    }
}

/// A part of the document that can be blanked out as a unit.
struct Entry {
    /// The span an error must point into to be blamed on this entry.
    anchor: Range<usize>,
    /// The text to blank out.
    blank: Vec<Range<usize>>,
}

/// `text` with the innermost entry around `offset` blanked out, or the next entry out if
/// blanking that one leaves invalid TOML. `None` if no entry holds `offset`.
fn blank_entry_at(text: &str, offset: usize) -> Option<String> {
    let document = Document::parse(text).ok()?;
    let mut entries = Vec::new();
    collect_entries(document.as_table(), text, &mut entries);
    entries.retain(|entry| entry.anchor.contains(&offset));
    entries.sort_by_key(|entry| entry.anchor.len());
    entries
        .iter()
        .map(|entry| blanked(text, &entry.blank))
        .find(|candidate| Document::parse(candidate.as_str()).is_ok())
}

/// Pushes the entries of `table`, a table whose pairs are written one per line.
fn collect_entries(table: &Table, text: &str, entries: &mut Vec<Entry>) {
    for (key, item) in keyed_items(table) {
        match item {
            Item::Value(value) => {
                entries.extend(line_pair_entry(text, key, value));
                collect_inline_entries(value, text, entries);
            }
            Item::Table(dotted) if dotted.is_dotted() => {
                if let Some(anchor) = key.span() {
                    entries.push(Entry { anchor, blank: line_pair_ranges(dotted, text) });
                }
                collect_entries(dotted, text, entries);
            }
            Item::Table(implicit) if implicit.is_implicit() => collect_entries(implicit, text, entries),
            Item::Table(section) => collect_section(section, text, entries),
            Item::ArrayOfTables(sections) => {
                for section in sections.iter() {
                    collect_section(section, text, entries);
                }
            }
            Item::None => {}
        }
    }
}

/// Pushes the entries of a table with a `[header]`: the header with everything under it,
/// and each of its entries.
fn collect_section(section: &Table, text: &str, entries: &mut Vec<Entry>) {
    if let Some(header) = section.span() {
        let body_end = line_pair_ranges(section, text).iter().map(|range| range.end).max();
        let whole_section = header.start..body_end.unwrap_or(header.end).max(header.end);
        entries.push(Entry { blank: vec![whole_section], anchor: header });
    }
    collect_entries(section, text, entries);
}

/// A `key = value` line, blanked from the start of its line so that a dotted key goes
/// along with its last part.
fn line_pair_entry(text: &str, key: &Key, value: &Value) -> Option<Entry> {
    let anchor = pair_span(key, value)?;
    Some(Entry { blank: vec![from_line_start(text, anchor.clone())], anchor })
}

/// The ranges to blank for every `key = value` line of `table`, through dotted keys.
fn line_pair_ranges(table: &Table, text: &str) -> Vec<Range<usize>> {
    let mut ranges = Vec::new();
    for (key, item) in keyed_items(table) {
        match item {
            Item::Value(value) => ranges.extend(pair_span(key, value).map(|pair| from_line_start(text, pair))),
            Item::Table(dotted) if dotted.is_dotted() => ranges.extend(line_pair_ranges(dotted, text)),
            _ => {}
        }
    }
    ranges
}

/// Pushes the pairs inside `value` if it is an inline table, and the inline tables inside
/// it if it is an array (such as `backends = [{ name = "a" }]`), each blanked along with
/// the comma that separates it from a neighbour.
fn collect_inline_entries(value: &Value, text: &str, entries: &mut Vec<Entry>) {
    match value {
        Value::InlineTable(inline) => {
            for (key, item) in keyed_items(inline) {
                let Some(value) = item.as_value() else {
                    continue;
                };
                if let Some(anchor) = pair_span(key, value) {
                    entries.push(Entry { blank: vec![with_separator(text, anchor.clone())], anchor });
                }
                collect_inline_entries(value, text, entries);
            }
        }
        Value::Array(array) => {
            for element in array.iter().filter(|element| element.is_inline_table()) {
                if let Some(anchor) = element.span() {
                    entries.push(Entry { blank: vec![with_separator(text, anchor.clone())], anchor });
                }
                collect_inline_entries(element, text, entries);
            }
        }
        _ => {}
    }
}

/// `pair` widened over the comma after it or, failing that, the comma before it.
fn with_separator(text: &str, pair: Range<usize>) -> Range<usize> {
    let after = text[pair.end..].trim_start_matches([' ', '\t']);
    if after.starts_with(',') {
        return pair.start..text.len() - after.len() + 1;
    }
    let before = text[..pair.start].trim_end_matches([' ', '\t']);
    match before.strip_suffix(',') {
        Some(up_to_comma) => up_to_comma.len()..pair.end,
        None => pair,
    }
}

/// From the start of `key` to the end of `value`.
fn pair_span(key: &Key, value: &Value) -> Option<Range<usize>> {
    Some(key.span()?.start..value.span()?.end)
}

fn from_line_start(text: &str, range: Range<usize>) -> Range<usize> {
    line_start(text, range.start)..range.end
}

/// The pairs of `table` with their keys, which carry the keys' spans.
fn keyed_items(table: &dyn TableLike) -> impl Iterator<Item = (&Key, &Item)> {
    table.iter().filter_map(|(name, _)| table.get_key_value(name))
}

/// `text` with every byte in `ranges` but newlines replaced by a space.
fn blanked(text: &str, ranges: &[Range<usize>]) -> String {
    let mut result = text.to_owned();
    for range in ranges {
        let spaces: String = text[range.clone()]
            .chars()
            .flat_map(|ch| std::iter::repeat_n(if ch == '\n' { '\n' } else { ' ' }, ch.len_utf8()))
            .collect();
        result.replace_range(range.clone(), &spaces);
    }
    result
}
