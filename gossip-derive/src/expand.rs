//! Expansion: the impls generated for valid input.

use proc_macro2::TokenStream;
use quote::{format_ident, quote, quote_spanned};
use syn::spanned::Spanned;
use syn::{DeriveInput, Path};

use crate::ast::{TagInput, TagsInput};
use crate::ctxt::Ctxt;
use crate::fallback;

/// `#[derive(Tag)]`.
pub fn derive_tag(node: &DeriveInput) -> TokenStream {
    let mut cx = Ctxt::default();
    let input = TagInput::from_syn(&mut cx, node);
    input.validate(&mut cx);
    let krate = krate(input.attrs.krate.as_ref());
    match cx.check() {
        Ok(()) => expand_tag(&input, &krate),
        Err(errors) => fallback::tag(node, &krate, errors),
    }
}

/// `#[derive(Tags)]`.
pub fn derive_tags(node: &DeriveInput) -> TokenStream {
    let mut cx = Ctxt::default();
    let input = TagsInput::from_syn(&mut cx, node);
    input.validate(&mut cx);
    let krate = krate(input.attrs.krate.as_ref());
    match cx.check() {
        Ok(()) => expand_tags(&input, &krate),
        Err(errors) => fallback::tags(node, &krate, errors),
    }
}

fn krate(path: Option<&Path>) -> TokenStream {
    match path {
        Some(path) => quote!(#path),
        None => quote!(::gossip),
    }
}

/// Wrap items in `const _: () = { .. };` so they add no names to the user's module.
pub fn wrap_in_const(items: TokenStream) -> TokenStream {
    quote! {
        #[doc(hidden)]
        #[allow(non_upper_case_globals, unused_attributes, unused_qualifications, clippy::all)]
        const _: () = {
            #items
        };
    }
}

fn expand_tag(input: &TagInput, krate: &TokenStream) -> TokenStream {
    let ident = input.ident;
    let name = input.name();
    let aliases: Vec<String> = input.attrs.aliases.iter().map(|a| a.value()).collect();
    let rust_type = format!("::{ident}");
    wrap_in_const(quote! {
        #[automatically_derived]
        impl #krate::Tag for #ident {
            const NAME: &'static str = #name;
            const ID: u64 = #krate::tag_id(#name);
            const ALIASES: &'static [u64] = &[#(#krate::tag_id(#aliases)),*];
        }

        #krate::__private::inventory::submit! {
            #krate::__private::TagEntry::new(
                #name,
                #krate::tag_id(#name),
                &[#(#aliases),*],
                ::core::concat!(::core::module_path!(), #rust_type),
            )
        }
    })
}

fn expand_tags(input: &TagsInput, krate: &TokenStream) -> TokenStream {
    let ident = input.ident;
    let listed: Vec<_> = input
        .variants
        .iter()
        .filter(|v| v.attrs.other.is_none())
        .filter_map(|v| Some((v.ident, v.ty?)))
        .collect();
    let other = input.variants.iter().find(|v| v.attrs.other.is_some());

    // One `TagInfo` const per variant, spanned on the user's type: the only place that needs
    // `T: Tag`, so a type that is not a Tag is reported once, on the variant.
    let info: Vec<_> = (0..listed.len())
        .map(|i| format_ident!("__GOSSIP_INFO_{i}"))
        .collect();
    let id: Vec<_> = (0..listed.len())
        .map(|i| format_ident!("__GOSSIP_ID_{i}"))
        .collect();
    let info_consts = listed
        .iter()
        .zip(&info)
        .zip(&id)
        .map(|(((_, ty), info), id)| {
            quote_spanned! {ty.span()=>
                const #info: #krate::__private::TagInfo<#ty> = #krate::__private::tag_info::<#ty>();
                const #id: u64 = #info.id;
            }
        });
    let variant: Vec<_> = listed.iter().map(|(v, _)| *v).collect();

    let unlisted = match other {
        Some(v) => {
            let variant = v.ident;
            let ty = v.ty.expect("validated: one field");
            let wrap = quote_spanned!(ty.span()=>
                <#ty as #krate::__private::OtherVariant>::wrap(msg)
            );
            quote!(#krate::__private::Result::Ok(Self::#variant(#wrap)))
        }
        None => quote!(#krate::__private::Result::Err(#krate::FromMessageError::Unlisted(msg))),
    };

    let from_impls = listed.iter().map(|(variant, ty)| {
        quote! {
            #[automatically_derived]
            impl ::core::convert::From<#ty> for #ident {
                #[inline]
                fn from(value: #ty) -> Self {
                    Self::#variant(value)
                }
            }
        }
    });

    // A compile-time check for every pair of variants: distinct types with the same tag name
    // (or a name that is the other's alias) would make a variant unreachable.
    let mut collisions = Vec::new();
    for (j, (second, ty)) in listed.iter().enumerate() {
        for (i, (first, _)) in listed.iter().enumerate().take(j) {
            let message = format!(
                "variants `{ident}::{first}` and `{ident}::{second}` carry types with the same tag \
                 id (same tag name, or a name that is the other's alias): give one of the types \
                 another name with #[tag(name = \"...\")]"
            );
            let (a, b) = (&info[i], &info[j]);
            collisions.push(quote_spanned! {ty.span()=>
                const _: () = ::core::assert!(
                    !#krate::__private::shares_id(#a.id, #a.aliases, #b.id, #b.aliases),
                    #message
                );
            });
        }
    }

    wrap_in_const(quote! {
        #(#info_consts)*

        #[automatically_derived]
        impl #krate::Tags for #ident {
            const IDS: &'static [u64] = &#krate::__private::concat::<
                { 0 #(+ 1 + #info.aliases.len())* }
            >(&[#(&[#id], #info.aliases),*]);

            fn from_message(
                msg: #krate::Message,
            ) -> #krate::__private::Result<Self, #krate::FromMessageError> {
                let id = msg.id();
                #[allow(unreachable_patterns)] // Only with an id clash, reported below.
                let decoded = match id {
                    #(#id => (#info.decode)(msg.envelope()).map(Self::#variant),)*
                    _ => {
                        #(
                            if #krate::__private::contains(#info.aliases, id) {
                                return (#info.decode)(msg.envelope())
                                    .map(Self::#variant)
                                    .map_err(#krate::FromMessageError::Decode);
                            }
                        )*
                        return #unlisted;
                    }
                };
                decoded.map_err(#krate::FromMessageError::Decode)
            }
        }

        #(#from_impls)*

        #(#collisions)*
    })
}
