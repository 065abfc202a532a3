//! Byte offsets in the config text: their lines, and the offsets of keys.

use toml_edit::Document;

/// The 1-based line of byte `offset` in `text`.
pub(super) fn line_of(text: &str, offset: usize) -> usize {
    let before = &text.as_bytes()[..offset.min(text.len())];
    before.iter().filter(|&&byte| byte == b'\n').count() + 1
}

/// The offset where the line holding byte `offset` starts.
pub(super) fn line_start(text: &str, offset: usize) -> usize {
    text[..offset].rfind('\n').map_or(0, |newline| newline + 1)
}

/// A config key (`section.field`), or one element of an array-valued key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct KeyPath {
    section: &'static str,
    field: &'static str,
    index: Option<usize>,
}

impl KeyPath {
    pub(super) fn field(section: &'static str, field: &'static str) -> Self {
        Self { section, field, index: None }
    }

    pub(super) fn element(section: &'static str, field: &'static str, index: usize) -> Self {
        Self { section, field, index: Some(index) }
    }

    /// Where this key is written in `document`: the array element if there is one, else
    /// the deepest key of the path that is written, else `None`.
    pub(super) fn offset_in(&self, document: &Document<&str>) -> Option<usize> {
        let mut item = document.as_item();
        let mut offset = None;
        for name in [self.section, self.field] {
            let Some((key, value)) = item.as_table_like().and_then(|table| table.get_key_value(name)) else {
                return offset;
            };
            offset = key.span().map(|span| span.start).or(offset);
            item = value;
        }
        let element = self.index.and_then(|index| item.as_array()?.get(index)?.span());
        element.map(|span| span.start).or(offset)
    }
}
