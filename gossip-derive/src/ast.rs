//! The typed model the derives work on, read from syn's `DeriveInput`.
//!
//! Parsing never fails here: shapes the derives do not support are kept as they are (with
//! their syn nodes for spans) and refused by [`crate::valid`], so every mistake is reported.

use syn::{Data, DeriveInput, Fields, Ident, Type};

use crate::attr::{self, TagAttrs, TagsAttrs, VariantAttrs};
use crate::ctxt::Ctxt;

/// Input of `#[derive(Tag)]`.
pub struct TagInput<'a> {
    /// The whole input, for spans.
    pub original: &'a DeriveInput,
    /// The type's name.
    pub ident: &'a Ident,
    /// Its `#[tag(...)]` attributes.
    pub attrs: TagAttrs,
}

/// Input of `#[derive(Tags)]`.
pub struct TagsInput<'a> {
    /// The whole input, for spans.
    pub original: &'a DeriveInput,
    /// The enum's name.
    pub ident: &'a Ident,
    /// Its `#[tags(...)]` attributes.
    pub attrs: TagsAttrs,
    /// The variants (empty when the input is not an enum).
    pub variants: Vec<Variant<'a>>,
}

/// One variant of a dispatch enum.
pub struct Variant<'a> {
    /// The syn node, for spans.
    pub original: &'a syn::Variant,
    /// The variant's name.
    pub ident: &'a Ident,
    /// Its `#[tags(...)]` attributes.
    pub attrs: VariantAttrs,
    /// The wrapped type, when the variant is a tuple variant with exactly one field.
    pub ty: Option<&'a Type>,
}

impl<'a> TagInput<'a> {
    /// Read the input and its attributes.
    pub fn from_syn(cx: &mut Ctxt, node: &'a DeriveInput) -> Self {
        Self {
            original: node,
            ident: &node.ident,
            attrs: attr::tag_attrs(cx, &node.attrs),
        }
    }
}

impl<'a> TagsInput<'a> {
    /// Read the input, its attributes and its variants.
    pub fn from_syn(cx: &mut Ctxt, node: &'a DeriveInput) -> Self {
        let attrs = attr::tags_attrs(cx, &node.attrs);
        let variants = match &node.data {
            Data::Enum(data) => data
                .variants
                .iter()
                .map(|v| Variant::from_syn(cx, v))
                .collect(),
            _ => Vec::new(),
        };
        Self {
            original: node,
            ident: &node.ident,
            attrs,
            variants,
        }
    }
}

impl<'a> Variant<'a> {
    fn from_syn(cx: &mut Ctxt, node: &'a syn::Variant) -> Self {
        let ty = match &node.fields {
            Fields::Unnamed(fields) if fields.unnamed.len() == 1 => Some(&fields.unnamed[0].ty),
            _ => None,
        };
        Self {
            original: node,
            ident: &node.ident,
            attrs: attr::variant_attrs(cx, &node.attrs),
            ty,
        }
    }
}
