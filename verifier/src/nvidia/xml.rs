//! A small strict XML parser and a Canonical XML 1.1 serializer, for the
//! signed SWID tags NVIDIA publishes as reference integrity manifests.
//!
//! Owns turning bytes into a namespace-resolved element tree (the slice of
//! the XPath 1.0 data model that Canonical XML needs) and writing that tree,
//! or a subtree of it, in canonical form. It verifies nothing by itself,
//! never panics on input, and refuses anything outside this subset with a
//! message that names what it found:
//!
//! * UTF-8 only (an optional byte-order mark and an optional XML declaration
//!   with `version="1.0"`, `encoding="UTF-8"` and `standalone`); every
//!   character must match the `Char` production (XML 1.0 §2.2).
//! * No document type declaration, hence no DTD, no entity declarations and
//!   no default attributes: `<!DOCTYPE` is refused.
//! * No comments, processing instructions or CDATA sections anywhere (the
//!   XML declaration aside); only whitespace outside the document element.
//! * References: the five predefined entities (`&lt;` `&gt;` `&amp;`
//!   `&quot;` `&apos;`) and character references that name a `Char`; any
//!   other entity reference is refused.
//! * Names are ASCII: `[A-Za-z_][A-Za-z0-9_.-]*`, with at most one colon
//!   between two such parts (a QName, Namespaces in XML 1.0 §4).
//! * Namespaces in XML 1.0: every prefix used must be declared; declaring
//!   the `xml` or `xmlns` prefixes, binding to their namespace names,
//!   undeclaring a prefix (`xmlns:p=""`) and relative namespace names are
//!   refused, as are attributes in the `xml:` namespace (`xml:lang`,
//!   `xml:space`, `xml:base`, `xml:id`: their inheritance rules in Canonical
//!   XML 1.1 §2.4 do not arise in this subset).
//! * Attributes must be unique by qualified name and by expanded name
//!   (Namespaces in XML 1.0 §6.3).
//! * Bounds: [`MAX_INPUT`] bytes, [`MAX_DEPTH`] nested elements,
//!   [`MAX_ATTRIBUTES`] attributes per element and [`MAX_NS_DECLS`]
//!   namespace declarations in the whole document.
//!
//! The parser applies what an XML processor must before Canonical XML sees
//! the document (Canonical XML 1.1 §2.1, "Data Model"): line ends are
//! normalized to `#xA` (XML 1.0 §2.11), attribute values are normalized as
//! CDATA attributes without a DTD (XML 1.0 §3.3.3: each literal whitespace
//! character becomes a space, character references keep their character),
//! and references are replaced by their characters.

use std::collections::BTreeMap;

/// Largest document accepted, in bytes.
pub(crate) const MAX_INPUT: usize = 4 * 1024 * 1024;
/// Deepest element nesting accepted (the document element is depth 1).
pub(crate) const MAX_DEPTH: usize = 32;
/// Most attributes (namespace declarations included) on one element.
pub(crate) const MAX_ATTRIBUTES: usize = 64;
/// Most namespace declarations in one document.
pub(crate) const MAX_NS_DECLS: usize = 64;

/// `http://www.w3.org/XML/1998/namespace`, bound to the `xml` prefix.
const XML_NS: &str = "http://www.w3.org/XML/1998/namespace";
/// `http://www.w3.org/2000/xmlns/`, bound to the `xmlns` prefix.
const XMLNS_NS: &str = "http://www.w3.org/2000/xmlns/";

/// Why bytes are not a document in the accepted subset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct XmlError(pub String);

impl core::fmt::Display for XmlError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(&self.0)
    }
}

/// An attribute after namespace processing (namespace declarations are not
/// attributes; they are in [`Element::ns_decls`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Attribute {
    /// The prefix as written, if any.
    pub prefix: Option<String>,
    /// The local part of the name.
    pub local: String,
    /// The namespace name; `None` for unprefixed attributes.
    pub ns: Option<String>,
    /// The normalized value.
    pub value: String,
}

/// A child of an element.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Node {
    /// A child element.
    Element(Element),
    /// Character data (maximal: two text nodes are never adjacent).
    Text(String),
}

/// An element after namespace processing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Element {
    /// The prefix as written, if any.
    pub prefix: Option<String>,
    /// The local part of the name.
    pub local: String,
    /// The namespace name, `None` when the element is in no namespace.
    pub ns: Option<String>,
    /// Namespace declarations written on this element, in document order:
    /// (prefix, namespace name), the prefix `""` for the default namespace
    /// and the name `""` for `xmlns=""`.
    pub ns_decls: Vec<(String, String)>,
    /// Attributes in document order.
    pub attrs: Vec<Attribute>,
    /// Children in document order.
    pub children: Vec<Node>,
}

impl Element {
    /// Whether this element is `local` in namespace `ns`.
    pub(crate) fn is(&self, ns: &str, local: &str) -> bool {
        self.ns.as_deref() == Some(ns) && self.local == local
    }

    /// The qualified name as written.
    pub(crate) fn qname(&self) -> String {
        match &self.prefix {
            Some(p) => format!("{p}:{}", self.local),
            None => self.local.clone(),
        }
    }

    /// The value of the attribute with this expanded name.
    pub(crate) fn attr(&self, ns: Option<&str>, local: &str) -> Option<&str> {
        self.attrs
            .iter()
            .find(|a| a.ns.as_deref() == ns && a.local == local)
            .map(|a| a.value.as_str())
    }

    /// Child elements in document order.
    pub(crate) fn elements(&self) -> impl Iterator<Item = &Element> {
        self.children.iter().filter_map(|n| match n {
            Node::Element(e) => Some(e),
            Node::Text(_) => None,
        })
    }

    /// The concatenated text children.
    pub(crate) fn text(&self) -> String {
        let mut s = String::new();
        for n in &self.children {
            if let Node::Text(t) = n {
                s.push_str(t);
            }
        }
        s
    }

    /// Whether every text child is XML whitespace (S, XML 1.0 §2.3).
    pub(crate) fn text_is_whitespace(&self) -> bool {
        self.children.iter().all(|n| match n {
            Node::Text(t) => t.bytes().all(is_ws),
            Node::Element(_) => true,
        })
    }
}

/// A parsed document: its document element.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Document {
    /// The document element.
    pub root: Element,
}

/// XML whitespace (S, XML 1.0 §2.3), after line-end normalization.
fn is_ws(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r')
}

/// The `Char` production (XML 1.0 §2.2).
fn is_xml_char(c: char) -> bool {
    matches!(c, '\u{9}' | '\u{A}' | '\u{D}' | '\u{20}'..='\u{D7FF}' | '\u{E000}'..='\u{FFFD}' | '\u{10000}'..)
}

fn is_name_start(b: u8) -> bool {
    b.is_ascii_alphabetic() || b == b'_'
}

fn is_name_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-')
}

/// Whether `uri` starts with a URI scheme (RFC 3986 §3.1) followed by ':'.
fn is_absolute_uri(uri: &str) -> bool {
    let Some((scheme, _)) = uri.split_once(':') else {
        return false;
    };
    let mut bytes = scheme.bytes();
    bytes.next().is_some_and(|b| b.is_ascii_alphabetic())
        && bytes.all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'))
}

/// Parse `input` as a document in the accepted subset (see the module
/// documentation).
pub(crate) fn parse(input: &[u8]) -> Result<Document, XmlError> {
    if input.len() > MAX_INPUT {
        return Err(XmlError(format!(
            "document is {} bytes, more than the {MAX_INPUT} accepted",
            input.len()
        )));
    }
    let input = input.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(input);
    let text = std::str::from_utf8(input).map_err(|e| {
        XmlError(format!(
            "document is not UTF-8 (invalid byte at offset {})",
            e.valid_up_to()
        ))
    })?;
    // XML 1.0 §2.11: CR LF and lone CR become LF before anything else.
    let mut normalized = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\r' {
            if chars.peek() == Some(&'\n') {
                chars.next();
            }
            normalized.push('\n');
        } else {
            normalized.push(c);
        }
    }
    if let Some((i, c)) = normalized.char_indices().find(|&(_, c)| !is_xml_char(c)) {
        return Err(XmlError(format!(
            "character U+{:04X} at offset {i} is not allowed in XML",
            u32::from(c)
        )));
    }
    let mut p = Parser {
        s: normalized.as_bytes(),
        pos: 0,
        ns_decls: 0,
    };
    p.prolog()?;
    if p.peek() != Some(b'<') {
        return Err(p.err("expected the document element"));
    }
    let mut scope = Vec::new();
    let root = p.element(1, &mut scope)?;
    p.misc()?;
    if p.pos < p.s.len() {
        return Err(p.err("content after the document element"));
    }
    Ok(Document { root })
}

struct Parser<'a> {
    s: &'a [u8],
    pos: usize,
    ns_decls: usize,
}

/// A qualified name as written.
struct QName {
    prefix: Option<String>,
    local: String,
}

impl QName {
    fn same(&self, other: &QName) -> bool {
        self.prefix == other.prefix && self.local == other.local
    }
    fn display(&self) -> String {
        match &self.prefix {
            Some(p) => format!("{p}:{}", self.local),
            None => self.local.clone(),
        }
    }
}

impl Parser<'_> {
    fn err(&self, what: &str) -> XmlError {
        XmlError(format!("{what} (at offset {})", self.pos))
    }

    fn peek(&self) -> Option<u8> {
        self.s.get(self.pos).copied()
    }

    fn starts_with(&self, lit: &[u8]) -> bool {
        self.s.get(self.pos..).is_some_and(|r| r.starts_with(lit))
    }

    fn bump(&mut self, n: usize) {
        self.pos = self.pos.saturating_add(n).min(self.s.len());
    }

    fn expect(&mut self, lit: &[u8], what: &str) -> Result<(), XmlError> {
        if self.starts_with(lit) {
            self.bump(lit.len());
            Ok(())
        } else {
            Err(self.err(&format!("expected {what}")))
        }
    }

    /// Skip whitespace; whether any was skipped.
    fn skip_ws(&mut self) -> bool {
        let start = self.pos;
        while self.peek().is_some_and(is_ws) {
            self.bump(1);
        }
        self.pos > start
    }

    /// Refuse the markup this subset leaves out, if it starts here.
    fn refuse_unsupported_markup(&self) -> Result<(), XmlError> {
        if self.starts_with(b"<!DOCTYPE") {
            Err(self.err("document type declarations (<!DOCTYPE, DTDs, entities) are not accepted"))
        } else if self.starts_with(b"<!--") {
            Err(self.err("comments are not accepted"))
        } else if self.starts_with(b"<![CDATA[") {
            Err(self.err("CDATA sections are not accepted"))
        } else if self.starts_with(b"<!") {
            Err(self.err("markup declarations are not accepted"))
        } else if self.starts_with(b"<?") {
            Err(self.err("processing instructions are not accepted"))
        } else {
            Ok(())
        }
    }

    /// XMLDecl? S*; anything else before the document element is refused.
    fn prolog(&mut self) -> Result<(), XmlError> {
        if self.starts_with(b"<?xml")
            && self
                .s
                .get(self.pos + 5)
                .is_some_and(|&b| is_ws(b) || b == b'?')
        {
            self.xml_decl()?;
        }
        self.misc()
    }

    /// Whitespace, refusing comments and processing instructions.
    fn misc(&mut self) -> Result<(), XmlError> {
        self.skip_ws();
        self.refuse_unsupported_markup()
    }

    /// `<?xml version="1.0" (encoding="UTF-8")? (standalone="yes|no")? ?>`
    /// (XML 1.0 §2.8).
    fn xml_decl(&mut self) -> Result<(), XmlError> {
        self.bump(5);
        let mut seen: Vec<String> = Vec::new();
        loop {
            let had_ws = self.skip_ws();
            if self.starts_with(b"?>") {
                self.bump(2);
                break;
            }
            if !had_ws {
                return Err(self.err("malformed XML declaration"));
            }
            let name = self.ncname()?;
            self.skip_ws();
            self.expect(b"=", "'=' in the XML declaration")?;
            self.skip_ws();
            let quote = self.peek();
            if quote != Some(b'"') && quote != Some(b'\'') {
                return Err(self.err("expected a quoted value in the XML declaration"));
            }
            self.bump(1);
            let start = self.pos;
            while self.peek().is_some_and(|b| Some(b) != quote && b != b'<') {
                self.bump(1);
            }
            let value = self
                .s
                .get(start..self.pos)
                .and_then(|v| std::str::from_utf8(v).ok())
                .unwrap_or("")
                .to_owned();
            if self.peek() != quote {
                return Err(self.err("unterminated value in the XML declaration"));
            }
            self.bump(1);
            let expected_position = match name.as_str() {
                "version" => 0,
                "encoding" => 1,
                "standalone" => 2,
                _ => return Err(self.err(&format!("unknown XML declaration field {name}"))),
            };
            let ok = match name.as_str() {
                "version" => value == "1.0",
                "encoding" => value.eq_ignore_ascii_case("UTF-8"),
                _ => value == "yes" || value == "no",
            };
            if !ok {
                return Err(self.err(&format!(
                    "XML declaration {name}=\"{value}\" is not accepted (only version 1.0, UTF-8)"
                )));
            }
            let order_ok = match seen.last().map(String::as_str) {
                None => expected_position == 0,
                Some("version") => expected_position > 0,
                Some("encoding") => expected_position > 1,
                _ => false,
            };
            if !order_ok {
                return Err(self.err("XML declaration fields out of order or repeated"));
            }
            seen.push(name);
        }
        if seen.is_empty() {
            return Err(self.err("XML declaration without a version"));
        }
        Ok(())
    }

    fn ncname(&mut self) -> Result<String, XmlError> {
        let start = self.pos;
        match self.peek() {
            Some(b) if is_name_start(b) => self.bump(1),
            Some(b) if !b.is_ascii() => {
                return Err(self.err("names must be ASCII in this XML subset"))
            }
            _ => return Err(self.err("expected a name")),
        }
        while self.peek().is_some_and(is_name_char) {
            self.bump(1);
        }
        if self.peek().is_some_and(|b| !b.is_ascii()) {
            return Err(self.err("names must be ASCII in this XML subset"));
        }
        let name = self
            .s
            .get(start..self.pos)
            .and_then(|v| std::str::from_utf8(v).ok())
            .ok_or_else(|| self.err("expected a name"))?;
        Ok(name.to_owned())
    }

    fn qname(&mut self) -> Result<QName, XmlError> {
        let first = self.ncname()?;
        if self.peek() == Some(b':') {
            self.bump(1);
            let local = self.ncname()?;
            Ok(QName {
                prefix: Some(first),
                local,
            })
        } else {
            Ok(QName {
                prefix: None,
                local: first,
            })
        }
    }

    /// A reference after its `&` (XML 1.0 §4.1): the character it stands for.
    fn reference(&mut self) -> Result<char, XmlError> {
        let start = self.pos;
        let end = self
            .s
            .get(start..)
            .and_then(|r| r.iter().take(12).position(|&b| b == b';'))
            .map(|i| start + i)
            .ok_or_else(|| self.err("'&' does not start a reference ending in ';'"))?;
        let body = self
            .s
            .get(start..end)
            .and_then(|v| std::str::from_utf8(v).ok())
            .ok_or_else(|| self.err("malformed reference"))?;
        let c = if let Some(hex) = body.strip_prefix("#x") {
            if hex.is_empty() || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(self.err(&format!("malformed character reference &{body};")));
            }
            u32::from_str_radix(hex, 16)
                .ok()
                .and_then(char::from_u32)
                .filter(|&c| is_xml_char(c))
        } else if let Some(dec) = body.strip_prefix('#') {
            if dec.is_empty() || !dec.bytes().all(|b| b.is_ascii_digit()) {
                return Err(self.err(&format!("malformed character reference &{body};")));
            }
            dec.parse::<u32>()
                .ok()
                .and_then(char::from_u32)
                .filter(|&c| is_xml_char(c))
        } else {
            Some(match body {
                "lt" => '<',
                "gt" => '>',
                "amp" => '&',
                "quot" => '"',
                "apos" => '\'',
                _ => {
                    return Err(self.err(&format!(
                        "entity reference &{body}; is not accepted (only &lt; &gt; &amp; &quot; &apos; and character references)"
                    )))
                }
            })
        };
        let c = c.ok_or_else(|| {
            self.err(&format!(
                "character reference &{body}; does not name an XML character"
            ))
        })?;
        self.pos = end + 1;
        Ok(c)
    }

    /// A quoted attribute value, normalized as CDATA (XML 1.0 §3.3.3).
    fn attr_value(&mut self) -> Result<String, XmlError> {
        let quote = match self.peek() {
            Some(q @ (b'"' | b'\'')) => q,
            _ => return Err(self.err("expected a quoted attribute value")),
        };
        self.bump(1);
        let mut out: Vec<u8> = Vec::new();
        loop {
            match self.peek() {
                None => return Err(self.err("unterminated attribute value")),
                Some(b) if b == quote => {
                    self.bump(1);
                    break;
                }
                Some(b'<') => return Err(self.err("'<' in an attribute value")),
                Some(b'&') => {
                    self.bump(1);
                    let c = self.reference()?;
                    let mut buf = [0u8; 4];
                    out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                }
                Some(b) if is_ws(b) => {
                    out.push(b' ');
                    self.bump(1);
                }
                Some(b) => {
                    out.push(b);
                    self.bump(1);
                }
            }
        }
        String::from_utf8(out).map_err(|_| self.err("attribute value is not UTF-8"))
    }

    /// Character data up to the next '<' (XML 1.0 §2.4).
    fn text(&mut self) -> Result<String, XmlError> {
        let mut out: Vec<u8> = Vec::new();
        while let Some(b) = self.peek() {
            match b {
                b'<' => break,
                b'&' => {
                    self.bump(1);
                    let c = self.reference()?;
                    let mut buf = [0u8; 4];
                    out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                }
                b']' if self.starts_with(b"]]>") => {
                    return Err(self.err("']]>' in character data"));
                }
                _ => {
                    out.push(b);
                    self.bump(1);
                }
            }
        }
        String::from_utf8(out).map_err(|_| self.err("character data is not UTF-8"))
    }

    fn lookup<'s>(scope: &'s [(String, String)], prefix: &str) -> Option<&'s str> {
        scope
            .iter()
            .rev()
            .find(|(p, _)| p == prefix)
            .map(|(_, u)| u.as_str())
    }

    /// An element and its content (XML 1.0 §3), with namespaces resolved
    /// against `scope` (declarations of its ancestors, outermost first).
    fn element(
        &mut self,
        depth: usize,
        scope: &mut Vec<(String, String)>,
    ) -> Result<Element, XmlError> {
        if depth > MAX_DEPTH {
            return Err(self.err(&format!(
                "elements nested more than {MAX_DEPTH} deep are not accepted"
            )));
        }
        self.expect(b"<", "'<'")?;
        let name = self.qname()?;
        let mut raw: Vec<(QName, String)> = Vec::new();
        let empty = loop {
            let had_ws = self.skip_ws();
            match self.peek() {
                Some(b'/') => {
                    self.expect(b"/>", "'/>'")?;
                    break true;
                }
                Some(b'>') => {
                    self.bump(1);
                    break false;
                }
                None => return Err(self.err("unexpected end inside a start tag")),
                Some(_) => {
                    if !had_ws {
                        return Err(self.err("expected whitespace before an attribute"));
                    }
                    let attr = self.qname()?;
                    self.skip_ws();
                    self.expect(b"=", "'=' after an attribute name")?;
                    self.skip_ws();
                    let value = self.attr_value()?;
                    if raw.iter().any(|(q, _)| q.same(&attr)) {
                        return Err(self.err(&format!(
                            "attribute {} appears twice on <{}>",
                            attr.display(),
                            name.display()
                        )));
                    }
                    raw.push((attr, value));
                    if raw.len() > MAX_ATTRIBUTES {
                        return Err(self.err(&format!(
                            "more than {MAX_ATTRIBUTES} attributes on one element"
                        )));
                    }
                }
            }
        };

        // Namespaces in XML 1.0 §3: declarations first.
        let mut ns_decls: Vec<(String, String)> = Vec::new();
        let mut plain: Vec<(QName, String)> = Vec::new();
        for (q, v) in raw {
            let declared = match (q.prefix.as_deref(), q.local.as_str()) {
                (None, "xmlns") => Some(String::new()),
                (Some("xmlns"), p) => Some(p.to_owned()),
                _ => None,
            };
            let Some(prefix) = declared else {
                plain.push((q, v));
                continue;
            };
            if prefix == "xml" || prefix == "xmlns" {
                return Err(self.err(&format!("declaring the {prefix} prefix is not accepted")));
            }
            if v == XML_NS || v == XMLNS_NS {
                return Err(self.err(&format!("binding a prefix to {v} is not accepted")));
            }
            if v.is_empty() && !prefix.is_empty() {
                return Err(self.err(&format!(
                    "undeclaring the prefix {prefix} is not allowed in XML 1.0"
                )));
            }
            if !v.is_empty() && !is_absolute_uri(&v) {
                return Err(self.err(&format!("namespace name \"{v}\" is not an absolute URI")));
            }
            ns_decls.push((prefix, v));
        }
        self.ns_decls += ns_decls.len();
        if self.ns_decls > MAX_NS_DECLS {
            return Err(self.err(&format!(
                "more than {MAX_NS_DECLS} namespace declarations in the document"
            )));
        }
        let mark = scope.len();
        scope.extend(ns_decls.iter().cloned());

        let ns = match name.prefix.as_deref() {
            None => Self::lookup(scope, "")
                .filter(|u| !u.is_empty())
                .map(str::to_owned),
            Some(p) => Some(
                Self::lookup(scope, p)
                    .ok_or_else(|| {
                        self.err(&format!(
                            "element {} uses an undeclared prefix",
                            name.display()
                        ))
                    })?
                    .to_owned(),
            ),
        };
        let mut attrs: Vec<Attribute> = Vec::with_capacity(plain.len());
        for (q, value) in plain {
            let ans = match q.prefix.as_deref() {
                None => None,
                Some("xml") => {
                    return Err(self.err(&format!(
                        "attribute {} in the xml: namespace is not accepted",
                        q.display()
                    )))
                }
                Some(p) => Some(
                    Self::lookup(scope, p)
                        .ok_or_else(|| {
                            self.err(&format!(
                                "attribute {} uses an undeclared prefix",
                                q.display()
                            ))
                        })?
                        .to_owned(),
                ),
            };
            if attrs.iter().any(|a| a.ns == ans && a.local == q.local) {
                return Err(self.err(&format!(
                    "attribute {} on <{}> has the same expanded name as another",
                    q.display(),
                    name.display()
                )));
            }
            attrs.push(Attribute {
                prefix: q.prefix,
                local: q.local,
                ns: ans,
                value,
            });
        }

        let mut children = Vec::new();
        if !empty {
            loop {
                if self.starts_with(b"</") {
                    self.bump(2);
                    let end = self.qname()?;
                    if !end.same(&name) {
                        return Err(self.err(&format!(
                            "end tag </{}> does not match <{}>",
                            end.display(),
                            name.display()
                        )));
                    }
                    self.skip_ws();
                    self.expect(b">", "'>' closing an end tag")?;
                    break;
                }
                match self.peek() {
                    None => {
                        return Err(self.err(&format!("document ends inside <{}>", name.display())))
                    }
                    Some(b'<') => {
                        self.refuse_unsupported_markup()?;
                        children.push(Node::Element(self.element(depth + 1, scope)?));
                    }
                    Some(_) => children.push(Node::Text(self.text()?)),
                }
            }
        }
        scope.truncate(mark);
        Ok(Element {
            prefix: name.prefix,
            local: name.local,
            ns,
            ns_decls,
            attrs,
            children,
        })
    }
}

// ---------------------------------------------------------------------------
// Canonical XML 1.1 (without comments).

/// Canonical XML 1.1 of the whole document whose element is `root`, leaving
/// out the subtree of `omit` (compared by identity): the enveloped-signature
/// transform (xmldsig-core §6.6.4) followed by canonicalization of the
/// resulting node-set (Canonical XML 1.1 §2.3). The XML declaration and
/// whitespace outside the document element are not part of the canonical
/// form (§1; §2.3, "Root Node"; this subset has no comments or processing
/// instructions outside the document element).
pub(crate) fn c14n_document(root: &Element, omit: Option<&Element>) -> Vec<u8> {
    let mut out = Vec::new();
    let mut scope: Vec<(&str, &str)> = Vec::new();
    write_element(&mut out, root, &mut scope, false, omit);
    out
}

/// Canonical XML 1.1 of the document subset made of `apex` and all its
/// descendants (Canonical XML 1.1 §2.4), where `ancestors` are `apex`'s
/// ancestor elements, outermost first. As the apex has no ancestor in the
/// node-set, every namespace in scope at it, declared on it or inherited,
/// is rendered on it (§2.3, "Namespace Nodes").
pub(crate) fn c14n_subtree(ancestors: &[&Element], apex: &Element) -> Vec<u8> {
    let mut out = Vec::new();
    let mut scope: Vec<(&str, &str)> = ancestors
        .iter()
        .flat_map(|a| a.ns_decls.iter().map(|(p, u)| (p.as_str(), u.as_str())))
        .collect();
    write_element(&mut out, apex, &mut scope, true, None);
    out
}

/// Text node escaping (Canonical XML 1.1 §2.3, "Text Nodes").
fn escape_text(out: &mut Vec<u8>, s: &str) {
    for b in s.bytes() {
        match b {
            b'&' => out.extend_from_slice(b"&amp;"),
            b'<' => out.extend_from_slice(b"&lt;"),
            b'>' => out.extend_from_slice(b"&gt;"),
            b'\r' => out.extend_from_slice(b"&#xD;"),
            _ => out.push(b),
        }
    }
}

/// Attribute value escaping (Canonical XML 1.1 §2.3, "Attribute Nodes").
fn escape_attr(out: &mut Vec<u8>, s: &str) {
    for b in s.bytes() {
        match b {
            b'&' => out.extend_from_slice(b"&amp;"),
            b'<' => out.extend_from_slice(b"&lt;"),
            b'"' => out.extend_from_slice(b"&quot;"),
            b'\t' => out.extend_from_slice(b"&#x9;"),
            b'\n' => out.extend_from_slice(b"&#xA;"),
            b'\r' => out.extend_from_slice(b"&#xD;"),
            _ => out.push(b),
        }
    }
}

fn lookup<'s>(scope: &[(&'s str, &'s str)], prefix: &str) -> Option<&'s str> {
    scope
        .iter()
        .rev()
        .find(|(p, _)| *p == prefix)
        .map(|&(_, u)| u)
}

/// Write `el` in canonical form. `scope` holds the namespace declarations of
/// its ancestors (outermost first); for a non-apex element its nearest
/// ancestor in the node-set is its parent, so a namespace node is rendered
/// only when the parent does not have the same one in scope.
fn write_element<'d>(
    out: &mut Vec<u8>,
    el: &'d Element,
    scope: &mut Vec<(&'d str, &'d str)>,
    apex: bool,
    omit: Option<&Element>,
) {
    // Namespace nodes to render, keyed (and so sorted, §2.2) by prefix, the
    // default namespace ("") first.
    let mut rendered: BTreeMap<&str, &str> = BTreeMap::new();
    if apex {
        let mut in_scope: BTreeMap<&str, &str> = BTreeMap::new();
        for &(p, u) in scope.iter() {
            in_scope.insert(p, u);
        }
        for (p, u) in &el.ns_decls {
            in_scope.insert(p, u);
        }
        // xmlns="" is an absent default namespace: nothing to render when
        // no ancestor is in the node-set.
        rendered.extend(in_scope.into_iter().filter(|(_, u)| !u.is_empty()));
    } else {
        for (p, u) in &el.ns_decls {
            let parent = lookup(scope, p).unwrap_or("");
            if parent != u.as_str() {
                rendered.insert(p, u);
            }
        }
    }
    // Attributes sorted by namespace name, then local name (§2.2); the
    // empty namespace name sorts first.
    let mut attrs: Vec<&Attribute> = el.attrs.iter().collect();
    attrs.sort_by(|a, b| {
        (a.ns.as_deref().unwrap_or(""), a.local.as_str())
            .cmp(&(b.ns.as_deref().unwrap_or(""), b.local.as_str()))
    });

    let qname = el.qname();
    out.push(b'<');
    out.extend_from_slice(qname.as_bytes());
    for (p, u) in &rendered {
        if p.is_empty() {
            out.extend_from_slice(b" xmlns=\"");
        } else {
            out.extend_from_slice(b" xmlns:");
            out.extend_from_slice(p.as_bytes());
            out.extend_from_slice(b"=\"");
        }
        escape_attr(out, u);
        out.push(b'"');
    }
    for a in attrs {
        out.push(b' ');
        if let Some(p) = &a.prefix {
            out.extend_from_slice(p.as_bytes());
            out.push(b':');
        }
        out.extend_from_slice(a.local.as_bytes());
        out.extend_from_slice(b"=\"");
        escape_attr(out, &a.value);
        out.push(b'"');
    }
    out.push(b'>');

    let mark = scope.len();
    scope.extend(el.ns_decls.iter().map(|(p, u)| (p.as_str(), u.as_str())));
    for child in &el.children {
        match child {
            Node::Text(t) => escape_text(out, t),
            Node::Element(c) => {
                if omit.is_some_and(|o| std::ptr::eq(o, c)) {
                    continue;
                }
                write_element(out, c, scope, false, omit);
            }
        }
    }
    scope.truncate(mark);
    // Empty elements are written as start-end tag pairs (§1; §2.3,
    // "Element Nodes").
    out.extend_from_slice(b"</");
    out.extend_from_slice(qname.as_bytes());
    out.push(b'>');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c14n(s: &str) -> String {
        let doc = parse(s.as_bytes()).unwrap();
        String::from_utf8(c14n_document(&doc.root, None)).unwrap()
    }

    fn refused(s: &str) -> String {
        parse(s.as_bytes()).unwrap_err().0
    }

    #[test]
    fn attributes_are_sorted_by_namespace_then_local_name() {
        assert_eq!(
            c14n(r#"<e xmlns:b="http://b" xmlns:a="http://a" z="1" b:x="2" a:y="3" a="4"/>"#),
            r#"<e xmlns:a="http://a" xmlns:b="http://b" a="4" z="1" a:y="3" b:x="2"></e>"#
        );
        // Namespace name, not prefix, decides the order.
        assert_eq!(
            c14n(r#"<e xmlns:a="http://z" xmlns:b="http://a" a:k="1" b:k="2"/>"#),
            r#"<e xmlns:a="http://z" xmlns:b="http://a" b:k="2" a:k="1"></e>"#
        );
    }

    #[test]
    fn default_namespace_first_and_superfluous_declarations_dropped() {
        assert_eq!(
            c14n(
                r#"<a xmlns:p="http://p" xmlns="http://d"><b xmlns="http://d" xmlns:p="http://p"><c xmlns:p="http://q"/></b></a>"#
            ),
            r#"<a xmlns="http://d" xmlns:p="http://p"><b><c xmlns:p="http://q"></c></b></a>"#
        );
        // xmlns="" only where a default namespace was in effect.
        assert_eq!(
            c14n(r#"<a xmlns=""><b xmlns="http://d"><c xmlns=""/></b></a>"#),
            r#"<a><b xmlns="http://d"><c xmlns=""></c></b></a>"#
        );
    }

    #[test]
    fn subtree_inherits_namespaces_in_scope() {
        let doc = parse(
            br#"<r xmlns="http://d" xmlns:n="http://n"><x xmlns:unused="http://u"/><s:S xmlns:s="http://s"><s:I a="1"><s:J/></s:I></s:S></r>"#,
        )
        .unwrap();
        let s = doc.root.elements().nth(1).unwrap();
        let i = s.elements().next().unwrap();
        let out = String::from_utf8(c14n_subtree(&[&doc.root, s], i)).unwrap();
        // Declarations from the ancestors (not from the sibling <x>), once,
        // on the apex only.
        assert_eq!(
            out,
            r#"<s:I xmlns="http://d" xmlns:n="http://n" xmlns:s="http://s" a="1"><s:J></s:J></s:I>"#
        );
    }

    #[test]
    fn enveloped_element_is_left_out_with_its_surrounding_text_kept() {
        let doc = parse(b"<r>\n  <a/>\n<sig><x/></sig>\n</r>\n\n").unwrap();
        let sig = doc.root.elements().nth(1).unwrap();
        let out = String::from_utf8(c14n_document(&doc.root, Some(sig))).unwrap();
        assert_eq!(out, "<r>\n  <a></a>\n\n</r>");
    }

    #[test]
    fn escaping_in_text_and_attributes() {
        assert_eq!(
            c14n("<e a=\"&amp;&lt;&gt;&quot;&#9;&#10;&#13;'\">&amp;&lt;&gt;\"&#13;\t\n'</e>"),
            "<e a=\"&amp;&lt;>&quot;&#x9;&#xA;&#xD;'\">&amp;&lt;&gt;\"&#xD;\t\n'</e>"
        );
        // Literal whitespace in attribute values is normalized to spaces
        // (XML 1.0 §3.3.3); CR LF in text becomes LF (§2.11).
        assert_eq!(
            c14n("<e a='x\ty\nz\r\nw'>1\r\n2\r3</e>"),
            "<e a=\"x y z w\">1\n2\n3</e>"
        );
    }

    #[test]
    fn empty_elements_become_start_end_pairs_and_declaration_is_dropped() {
        assert_eq!(
            c14n("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<a><b/><c /></a>\n"),
            "<a><b></b><c></c></a>"
        );
        assert_eq!(c14n("<a   x = 'v' ></a  >"), "<a x=\"v\"></a>");
    }

    #[test]
    fn refuses_what_the_subset_leaves_out() {
        assert!(refused("<!DOCTYPE a [<!ENTITY x \"y\">]><a>&x;</a>").contains("DOCTYPE"));
        assert!(refused("<a>&x;</a>").contains("entity reference &x;"));
        assert!(refused("<a><!-- c --></a>").contains("comments"));
        assert!(refused("<!-- c --><a/>").contains("comments"));
        assert!(refused("<a><![CDATA[x]]></a>").contains("CDATA"));
        assert!(refused("<a><?pi x?></a>").contains("processing instructions"));
        assert!(refused("<a/><?pi x?>").contains("processing instructions"));
        assert!(refused("<a xml:lang='en'/>").contains("xml: namespace"));
        assert!(refused("<p:a/>").contains("undeclared prefix"));
        assert!(refused("<a p:x='1'/>").contains("undeclared prefix"));
        assert!(refused("<a x='1' x='2'/>").contains("twice"));
        assert!(
            refused("<a xmlns:p='http://n' xmlns:q='http://n' p:x='1' q:x='2'/>")
                .contains("same expanded name")
        );
        assert!(refused("<a xmlns:p=''/>").contains("undeclaring"));
        assert!(refused("<a xmlns='rel'/>").contains("absolute URI"));
        assert!(refused("<a></b>").contains("does not match"));
        assert!(refused("<a>").contains("ends inside"));
        assert!(refused("<a/><b/>").contains("after the document element"));
        assert!(refused("<a/>x").contains("after the document element"));
        assert!(refused("<a x='1'y='2'/>").contains("whitespace"));
        assert!(refused("<a>]]></a>").contains("]]>"));
        assert!(refused("<a>&#0;</a>").contains("does not name"));
        assert!(refused("<a>\u{1}</a>").contains("not allowed"));
        assert!(refused("<a x='<'/>").contains("'<'"));
        assert!(refused("<?xml version='1.1'?><a/>").contains("version"));
        assert!(refused("<?xml version='1.0' encoding='ISO-8859-1'?><a/>").contains("encoding"));
        assert!(refused("<\u{e9}/>").contains("ASCII"));
        assert!(parse(&[0x3c, 0x61, 0xff, 0x2f, 0x3e]).is_err());
        assert!(parse(b"").is_err());
    }

    #[test]
    fn bounds_are_enforced() {
        let deep = "<a>".repeat(MAX_DEPTH + 1) + &"</a>".repeat(MAX_DEPTH + 1);
        assert!(refused(&deep).contains("nested"));
        let ok = "<a>".repeat(MAX_DEPTH) + &"</a>".repeat(MAX_DEPTH);
        assert!(parse(ok.as_bytes()).is_ok());
        assert!(parse(&vec![b' '; MAX_INPUT + 1])
            .unwrap_err()
            .0
            .contains("bytes"));
        let many: String = (0..=MAX_NS_DECLS)
            .map(|i| format!("<e xmlns:p{i}='http://x'>"))
            .collect::<String>()
            + &"</e>".repeat(MAX_NS_DECLS + 1);
        assert!(parse(many.as_bytes()).is_err());
    }

    #[test]
    fn truncations_of_a_document_never_panic() {
        let doc = "<?xml version='1.0'?><r xmlns='http://d' xmlns:p='http://p'><p:a p:x=\"1&amp;&#x41;\">t&lt;</p:a><b/></r>";
        for i in 0..doc.len() {
            let _ = parse(&doc.as_bytes()[..i]);
        }
        assert!(parse(doc.as_bytes()).is_ok());
    }
}
