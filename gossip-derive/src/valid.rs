//! Validation: everything the derives refuse, each error spanned on the tokens at fault.

use std::collections::HashMap;

use quote::ToTokens;
use syn::{Data, Fields, Generics, LitStr};

use crate::ast::{TagInput, TagsInput};
use crate::ctxt::Ctxt;

/// Longest accepted tag name, in bytes.
const MAX_NAME_LEN: usize = 128;

impl TagInput<'_> {
    /// Check the shape of the type and its attributes.
    pub fn validate(&self, cx: &mut Ctxt) {
        match &self.original.data {
            Data::Struct(_) => {}
            Data::Enum(data) => cx.error_spanned_by(
                data.enum_token,
                "#[derive(Tag)] works on structs only: a message type is a struct; to receive \
                 several message types, wrap each in a struct and list them in a \
                 #[derive(Tags)] enum",
            ),
            Data::Union(data) => cx.error_spanned_by(
                data.union_token,
                "#[derive(Tag)] works on structs only: a union cannot be serialized; use a struct",
            ),
        }
        not_generic(
            cx,
            &self.original.generics,
            "#[derive(Tag)] does not support generics: a message type has one fixed tag, so it \
             must be a concrete type; define one struct per instantiation",
        );
        let name = self.name();
        if let Some(lit) = &self.attrs.name {
            check_name(cx, lit, "tag name");
        }
        let mut seen: Vec<String> = Vec::new();
        for alias in &self.attrs.aliases {
            if !check_name(cx, alias, "alias") {
                continue;
            }
            let value = alias.value();
            if value == name {
                cx.error_spanned_by(
                    alias,
                    format!("alias `{value}` is the tag name itself: remove the alias"),
                );
            } else if seen.contains(&value) {
                cx.error_spanned_by(alias, format!("duplicate alias `{value}`: list it once"));
            } else {
                seen.push(value);
            }
        }
    }

    /// The tag name: `#[tag(name = "...")]` or the type's name.
    pub fn name(&self) -> String {
        match &self.attrs.name {
            Some(lit) => lit.value(),
            None => self.ident.to_string(),
        }
    }
}

impl TagsInput<'_> {
    /// Check the shape of the enum, its variants and their attributes.
    pub fn validate(&self, cx: &mut Ctxt) {
        match &self.original.data {
            Data::Enum(_) => {}
            Data::Struct(data) => {
                return cx.error_spanned_by(
                    data.struct_token,
                    "#[derive(Tags)] works on enums only: write `enum Inbox { Commit(Commit), \
                     .. }` with one variant per message type (a single message type derives \
                     Tag instead)",
                );
            }
            Data::Union(data) => {
                return cx.error_spanned_by(
                    data.union_token,
                    "#[derive(Tags)] works on enums only: write `enum Inbox { Commit(Commit), \
                     .. }` with one variant per message type",
                );
            }
        }
        not_generic(
            cx,
            &self.original.generics,
            "#[derive(Tags)] does not support generics: each variant wraps one concrete message \
             type",
        );
        if self.variants.is_empty() {
            cx.error_spanned_by(
                self.ident,
                format!(
                    "`{}` has no variants: a Tags enum needs one variant per message type it \
                     receives, like `Commit(Commit)`",
                    self.ident
                ),
            );
        }
        let mut other: Option<&syn::Ident> = None;
        let mut types: HashMap<String, &syn::Ident> = HashMap::new();
        for variant in &self.variants {
            let ident = variant.ident;
            let Some(ty) = variant.ty else {
                let (tokens, how): (&dyn ToTokens, &str) = match &variant.original.fields {
                    Fields::Unit => (ident, "has no field"),
                    Fields::Named(fields) => (fields, "has named fields"),
                    Fields::Unnamed(fields) => (fields, "has several fields"),
                };
                let inner = if variant.attrs.other.is_some() {
                    "gossip::Message".to_owned()
                } else {
                    match variant.original.fields.iter().next() {
                        Some(field) => field.ty.to_token_stream().to_string(),
                        None => ident.to_string(),
                    }
                };
                let hint = if variant.original.fields.len() > 1 {
                    "; to carry several values, put them in one message struct"
                } else {
                    ""
                };
                cx.error_spanned_by(
                    tokens,
                    format!(
                        "variant `{ident}` {how}: each variant wraps exactly one message type, \
                         like `{ident}({inner})`{hint}"
                    ),
                );
                continue;
            };
            if let Some(key) = &variant.attrs.other {
                if let Some(first) = other {
                    cx.error_spanned_by(
                        key,
                        format!(
                            "a second `other` variant: `{first}` already receives every \
                             unlisted tag; keep one"
                        ),
                    );
                } else {
                    other = Some(ident);
                }
                continue;
            }
            let key = ty.to_token_stream().to_string();
            if let Some(first) = types.get(&key) {
                cx.error_spanned_by(
                    ty,
                    format!(
                        "`{key}` is already received by variant `{first}`: each message type \
                         appears in one variant only"
                    ),
                );
            } else {
                types.insert(key, ident);
            }
        }
    }
}

fn not_generic(cx: &mut Ctxt, generics: &Generics, message: &str) {
    if !generics.params.is_empty() {
        cx.error_spanned_by(generics, message);
    }
}

/// Check one name; report and return false when it is invalid.
fn check_name(cx: &mut Ctxt, lit: &LitStr, what: &str) -> bool {
    let value = lit.value();
    if value.is_empty() {
        cx.error_spanned_by(lit, format!("empty {what}: give a name, like \"commit\""));
        return false;
    }
    if value.len() > MAX_NAME_LEN {
        cx.error_spanned_by(
            lit,
            format!(
                "{what} is {} bytes long: use at most {MAX_NAME_LEN}",
                value.len()
            ),
        );
        return false;
    }
    if let Some(bad) = value.chars().find(|c| !valid_char(*c)) {
        cx.error_spanned_by(
            lit,
            format!(
                "invalid character {bad:?} in {what} \"{}\": use ASCII letters, digits and \
                 `_ - . : /`",
                value.escape_default()
            ),
        );
        return false;
    }
    true
}

fn valid_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | ':' | '/')
}
