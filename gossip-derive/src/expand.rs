//! Expansion: the impls generated for valid input.

use proc_macro2::TokenStream;
use quote::{quote, quote_spanned};
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
        .filter_map(|v| Some((v, v.ty?)))
        .collect();
    let other = input.variants.iter().find(|v| v.attrs.other.is_some());

    // `<T as Tag>` spanned on the user's type, so a type that is not a Tag is reported there.
    let as_tag: Vec<TokenStream> = listed
        .iter()
        .map(|(_, ty)| quote_spanned!(ty.span()=> <#ty as #krate::Tag>))
        .collect();

    let ids_len = quote!(0 #(+ 1 + #as_tag::ALIASES.len())*);
    let ids_parts = quote!(#(&[#as_tag::ID], #as_tag::ALIASES),*);

    let primary_arms = listed.iter().zip(&as_tag).map(|((v, ty), as_tag)| {
        let variant = v.ident;
        quote! {
            #as_tag::ID => {
                return #krate::codec::decode_payload::<#ty>(msg.payload())
                    .map(Self::#variant)
                    .map_err(#krate::FromMessageError::Decode);
            }
        }
    });
    let alias_checks = listed.iter().zip(&as_tag).map(|((v, ty), as_tag)| {
        let variant = v.ident;
        quote! {
            if #krate::__private::contains(#as_tag::ALIASES, id) {
                return #krate::codec::decode_payload::<#ty>(msg.payload())
                    .map(Self::#variant)
                    .map_err(#krate::FromMessageError::Decode);
            }
        }
    });
    let unlisted = match other {
        Some(v) => {
            let variant = v.ident;
            quote!(#krate::__private::Result::Ok(Self::#variant(msg)))
        }
        None => quote!(#krate::__private::Result::Err(#krate::FromMessageError::Unlisted(msg))),
    };

    let from_impls = listed.iter().map(|(v, ty)| {
        let variant = v.ident;
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
    // (or an alias clash) would make one of the variants unreachable.
    let mut collisions = Vec::new();
    for (j, ((second, ty), b)) in listed.iter().zip(&as_tag).enumerate() {
        for ((first, _), a) in listed.iter().zip(&as_tag).take(j) {
            let message = format!(
                "variants `{ident}::{}` and `{ident}::{}` carry types with the same tag id (same \
                 tag name, or a name that is the other's alias): give one of the types another \
                 name with #[tag(name = \"...\")]",
                first.ident, second.ident
            );
            collisions.push(quote_spanned! {ty.span()=>
                const _: () = ::core::assert!(
                    !#krate::__private::shares_id(#a::ID, #a::ALIASES, #b::ID, #b::ALIASES),
                    #message
                );
            });
        }
    }

    wrap_in_const(quote! {
        #[automatically_derived]
        impl #krate::Tags for #ident {
            const IDS: &'static [u64] = &#krate::__private::concat::<{ #ids_len }>(&[#ids_parts]);

            fn from_message(
                msg: #krate::Message,
            ) -> #krate::__private::Result<Self, #krate::FromMessageError> {
                let id = msg.id();
                #[allow(unreachable_patterns)]
                match id {
                    #(#primary_arms)*
                    _ => {}
                }
                #(#alias_checks)*
                #unlisted
            }
        }

        #(#from_impls)*

        #(#collisions)*
    })
}
