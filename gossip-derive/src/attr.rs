//! Reading `#[tag(...)]` and `#[tags(...)]` attributes into typed structs.
//!
//! Keys are parsed with syn's `parse_nested_meta`; duplicates and unknown keys are reported on
//! the offending key, and parsing goes on so that every mistake is reported at once.

use syn::meta::ParseNestedMeta;
use syn::{Attribute, Expr, ExprLit, Lit, LitStr, Meta, Path, Token};

use crate::ctxt::Ctxt;

/// The attribute on message types.
pub const TAG: &str = "tag";
/// The attribute on dispatch enums and their variants.
pub const TAGS: &str = "tags";
const NAME: &str = "name";
const ALIAS: &str = "alias";
const CRATE: &str = "crate";
const OTHER: &str = "other";

/// `#[tag(...)]` on a message type.
#[derive(Default)]
pub struct TagAttrs {
    /// `name = "..."`.
    pub name: Option<LitStr>,
    /// Every `alias = "..."`, in order.
    pub aliases: Vec<LitStr>,
    /// `crate = "..."`.
    pub krate: Option<Path>,
}

/// `#[tags(...)]` on a dispatch enum.
#[derive(Default)]
pub struct TagsAttrs {
    /// `crate = "..."`.
    pub krate: Option<Path>,
}

/// `#[tags(...)]` on a variant of a dispatch enum.
#[derive(Default)]
pub struct VariantAttrs {
    /// `other`: the catch-all variant. Keeps the key for spans.
    pub other: Option<Path>,
}

/// Read every `#[tag(...)]` of a message type.
pub fn tag_attrs(cx: &mut Ctxt, attrs: &[Attribute]) -> TagAttrs {
    let mut out = TagAttrs::default();
    for attr in attrs.iter().filter(|a| a.path().is_ident(TAG)) {
        if !is_list(cx, attr, TAG, "#[tag(name = \"...\")]") {
            continue;
        }
        let result = attr.parse_nested_meta(|meta| {
            if meta.path.is_ident(NAME) {
                let name = string_value(&meta, NAME, "the tag name on the wire")?;
                if out.name.is_some() {
                    cx.error_spanned_by(
                        &meta.path,
                        "duplicate `name`: a message type has one tag name; keep former names \
                         with `alias = \"...\"`",
                    );
                } else {
                    out.name = Some(name);
                }
            } else if meta.path.is_ident(ALIAS) {
                out.aliases
                    .push(string_value(&meta, ALIAS, "a former tag name")?);
            } else if meta.path.is_ident(CRATE) {
                let krate = crate_value(&meta)?;
                if out.krate.is_some() {
                    cx.error_spanned_by(&meta.path, "duplicate `crate`: give the path once");
                } else {
                    out.krate = Some(krate);
                }
            } else {
                return Err(unknown_key(&meta, TAG, &[NAME, ALIAS, CRATE]));
            }
            Ok(())
        });
        if let Err(e) = result {
            cx.syn_error(e);
        }
    }
    out
}

/// Read every `#[tags(...)]` of a dispatch enum.
pub fn tags_attrs(cx: &mut Ctxt, attrs: &[Attribute]) -> TagsAttrs {
    let mut out = TagsAttrs::default();
    for attr in attrs.iter().filter(|a| a.path().is_ident(TAGS)) {
        if !is_list(cx, attr, TAGS, "#[tags(crate = \"...\")]") {
            continue;
        }
        let result = attr.parse_nested_meta(|meta| {
            if meta.path.is_ident(CRATE) {
                let krate = crate_value(&meta)?;
                if out.krate.is_some() {
                    cx.error_spanned_by(&meta.path, "duplicate `crate`: give the path once");
                } else {
                    out.krate = Some(krate);
                }
            } else if meta.path.is_ident(OTHER) {
                return Err(meta.error(
                    "`other` goes on a variant, not on the enum: \
                     `#[tags(other)] Other(gossip::Message)`",
                ));
            } else {
                return Err(unknown_key(&meta, TAGS, &[CRATE]));
            }
            Ok(())
        });
        if let Err(e) = result {
            cx.syn_error(e);
        }
    }
    out
}

/// Read every `#[tags(...)]` of one variant.
pub fn variant_attrs(cx: &mut Ctxt, attrs: &[Attribute]) -> VariantAttrs {
    let mut out = VariantAttrs::default();
    for attr in attrs.iter().filter(|a| a.path().is_ident(TAGS)) {
        if !is_list(cx, attr, TAGS, "#[tags(other)]") {
            continue;
        }
        let result = attr.parse_nested_meta(|meta| {
            if meta.path.is_ident(OTHER) {
                if !meta.input.is_empty() && !meta.input.peek(Token![,]) {
                    return Err(meta.error("`other` takes no value: write `#[tags(other)]`"));
                }
                if out.other.is_some() {
                    cx.error_spanned_by(&meta.path, "duplicate `other`: write it once");
                } else {
                    out.other = Some(meta.path.clone());
                }
            } else if meta.path.is_ident(CRATE) {
                return Err(meta.error(
                    "`crate` goes on the enum, not on a variant: `#[tags(crate = \"...\")]`",
                ));
            } else {
                return Err(unknown_key(&meta, TAGS, &[OTHER]));
            }
            Ok(())
        });
        if let Err(e) = result {
            cx.syn_error(e);
        }
    }
    out
}

/// Whether `attr` is `#[name(...)]`; reports `#[name]` and `#[name = ...]`.
fn is_list(cx: &mut Ctxt, attr: &Attribute, name: &str, example: &str) -> bool {
    match &attr.meta {
        Meta::List(_) => true,
        _ => {
            cx.error_spanned_by(
                attr,
                format!("#[{name}] expects a list of keys, like `{example}`"),
            );
            false
        }
    }
}

/// `key = "string"`.
fn string_value(meta: &ParseNestedMeta, key: &str, what: &str) -> syn::Result<LitStr> {
    if !meta.input.peek(Token![=]) {
        return Err(meta.error(format!("expected `{key} = \"...\"`: {what} as a string")));
    }
    let expr: Expr = meta.value()?.parse()?;
    match expr {
        Expr::Lit(ExprLit {
            lit: Lit::Str(s), ..
        }) => Ok(s),
        other => Err(syn::Error::new_spanned(
            other,
            format!("expected a string literal: `{key} = \"...\"`"),
        )),
    }
}

/// `crate = "path"`.
fn crate_value(meta: &ParseNestedMeta) -> syn::Result<Path> {
    let lit = string_value(meta, CRATE, "the path to the gossip crate")?;
    lit.parse::<Path>().map_err(|_| {
        syn::Error::new_spanned(
            &lit,
            "expected a path to the gossip crate, like `crate = \"my::gossip\"`",
        )
    })
}

fn unknown_key(meta: &ParseNestedMeta, attr: &str, known: &[&str]) -> syn::Error {
    let key = quote::ToTokens::to_token_stream(&meta.path)
        .to_string()
        .replace(' ', "");
    let list = known
        .iter()
        .map(|k| format!("`{k}`"))
        .collect::<Vec<_>>()
        .join(", ");
    let message = match known.iter().find(|k| edit_distance(k, &key) <= 2) {
        Some(close) => {
            format!(
                "unknown key `{key}` in #[{attr}(...)]: did you mean `{close}`? (the keys are {list})"
            )
        }
        None => format!("unknown key `{key}` in #[{attr}(...)]: the keys are {list}"),
    };
    syn::Error::new_spanned(&meta.path, message)
}

/// Levenshtein distance, for "did you mean" hints on short keys.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != *cb)).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use super::edit_distance;

    #[test]
    fn edit_distance_counts_edits() {
        assert_eq!(edit_distance("name", "name"), 0);
        assert_eq!(edit_distance("name", "nmae"), 2);
        assert_eq!(edit_distance("alias", "aliases"), 2);
        assert_eq!(edit_distance("other", "default"), 7);
        assert_eq!(edit_distance("", "crate"), 5);
    }
}
