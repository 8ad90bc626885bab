//! Derive macros for [`gossip`](https://docs.rs/gossip): `#[derive(Tag)]` and `#[derive(Tags)]`.
//!
//! Do not depend on this crate directly: `gossip` re-exports both derives under the names of
//! the traits they implement, and the expansions refer to `::gossip::...` paths (override with
//! `#[tag(crate = "path")]` / `#[tags(crate = "path")]` when re-exporting `gossip`).
//!
//! Each derive parses its input into a small typed model ([`ast`]), validates it ([`valid`])
//! collecting every mistake at once, and expands it ([`expand`]). On invalid input it emits the
//! errors plus a stub impl ([`fallback`]), so the user sees only the real mistakes.

mod ast;
mod attr;
mod ctxt;
mod expand;
mod fallback;
mod valid;

use proc_macro::TokenStream;
use syn::{DeriveInput, parse_macro_input};

/// Make a struct a gossip message type: implements `gossip::Tag` and registers the type.
///
/// Attributes: `#[tag(name = "wire-name")]` (default: the type's name), `#[tag(alias = "Old")]`
/// (repeatable; ids of former names, still accepted when decoding), `#[tag(crate = "path")]`.
#[proc_macro_derive(Tag, attributes(tag))]
pub fn derive_tag(input: TokenStream) -> TokenStream {
    let input = parse_macro_input!(input as DeriveInput);
    expand::derive_tag(&input).into()
}

/// Make an enum a dispatch enum over message types: implements `gossip::Tags` and `From` for
/// each variant's type.
///
/// Each variant wraps exactly one `Tag` type: `Commit(Commit)`. One variant may be marked
/// `#[tags(other)] Other(gossip::Message)` to receive every tag the enum does not list.
/// `#[tags(crate = "path")]` on the enum overrides the path to the `gossip` crate.
#[proc_macro_derive(Tags, attributes(tags))]
pub fn derive_tags(input: TokenStream) -> TokenStream {
    let input = parse_macro_input!(input as DeriveInput);
    expand::derive_tags(&input).into()
}
