//! Byte offsets in the config text: their lines, and the offsets of keys.

use std::ops::Range;

use toml_edit::{Document, Item, Table, TableLike, Value};

/// The 1-based line of byte `offset` in `text`.
pub(super) fn line_of(text: &str, offset: usize) -> usize {
    let before = &text.as_bytes()[..offset.min(text.len())];
    before.iter().filter(|&&byte| byte == b'\n').count() + 1
}

/// The offset where the line holding byte `offset` starts.
pub(super) fn line_start(text: &str, offset: usize) -> usize {
    text[..offset].rfind('\n').map_or(0, |newline| newline + 1)
}

/// One step of a [`KeyPath`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    /// The value of a key in a table.
    Key(&'static str),
    /// An element of an array, or an entry of an array of tables.
    Index(usize),
}

/// A config key such as `section.field`, `sip.listen[2]`, `backends[1]` (the `[[backends]]`
/// entry) or `groups[0].backends[3]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct KeyPath {
    steps: Vec<Step>,
}

/// Where a [`KeyPath`] is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Location {
    /// Start of the written key, array element or table header.
    pub offset: usize,
    /// Whether the whole path is written; if not, `offset` is that of its deepest part that is.
    pub exact: bool,
}

impl KeyPath {
    /// The top-level key `name`.
    pub(super) fn key(name: &'static str) -> Self {
        Self { steps: vec![Step::Key(name)] }
    }

    /// The key written `key` with its parts separated by `.`, such as `"health.interval"`.
    pub(super) fn dotted(key: &'static str) -> Self {
        Self { steps: key.split('.').map(Step::Key).collect() }
    }

    /// `section.field`.
    pub(super) fn field(section: &'static str, field: &'static str) -> Self {
        Self::key(section).then(field)
    }

    /// Element `index` of the array `section.field`.
    pub(super) fn element(section: &'static str, field: &'static str, index: usize) -> Self {
        Self::field(section, field).at(index)
    }

    /// Entry `index` of the array of tables `array` (its `[[array]]` header).
    pub(super) fn entry(array: &'static str, index: usize) -> Self {
        Self::key(array).at(index)
    }

    /// This path followed by the key `name`.
    pub(super) fn then(mut self, name: &'static str) -> Self {
        self.steps.push(Step::Key(name));
        self
    }

    /// This path followed by the array index `index`.
    pub(super) fn at(mut self, index: usize) -> Self {
        self.steps.push(Step::Index(index));
        self
    }

    /// Where this key is written in `document`: the key, array element or `[[table]]`
    /// header it names if written, else the deepest part of the path that is written,
    /// else `None`.
    pub(super) fn location_in(&self, document: &Document<&str>) -> Option<Location> {
        let mut node = Node::Item(document.as_item());
        let mut offset = None;
        for &step in &self.steps {
            let Some((span, child)) = node.child(step) else {
                return offset.map(|offset| Location { offset, exact: false });
            };
            offset = span.map(|span| span.start).or(offset);
            node = child;
        }
        offset.map(|offset| Location { offset, exact: true })
    }
}

/// A place in a document that a [`Step`] can lead from.
#[derive(Clone, Copy)]
enum Node<'a> {
    Item(&'a Item),
    /// An entry of an array of tables.
    Table(&'a Table),
    /// An array element.
    Value(&'a Value),
}

impl<'a> Node<'a> {
    /// The node `step` leads to, with the span of what names it (key, element, header).
    fn child(self, step: Step) -> Option<(Option<Range<usize>>, Node<'a>)> {
        match step {
            Step::Key(name) => {
                let (key, item) = self.table_like()?.get_key_value(name)?;
                Some((key.span(), Node::Item(item)))
            }
            Step::Index(index) => match self {
                Node::Item(Item::ArrayOfTables(tables)) => {
                    let table = tables.get(index)?;
                    Some((table.span(), Node::Table(table)))
                }
                Node::Item(Item::Value(value)) | Node::Value(value) => {
                    let element = value.as_array()?.get(index)?;
                    Some((element.span(), Node::Value(element)))
                }
                Node::Item(_) | Node::Table(_) => None,
            },
        }
    }

    fn table_like(self) -> Option<&'a dyn TableLike> {
        match self {
            Node::Item(item) => item.as_table_like(),
            Node::Table(table) => Some(table),
            Node::Value(value) => value.as_inline_table().map(|table| table as &dyn TableLike),
        }
    }
}
