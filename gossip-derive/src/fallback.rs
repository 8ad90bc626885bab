//! Expansion for invalid input: the errors, plus a stub impl so that code using the type does
//! not pile follow-on errors ("`X` is not a gossip message type") on top of the real mistake.

use proc_macro2::TokenStream;
use quote::quote;
use syn::{Data, DeriveInput};

use crate::expand::wrap_in_const;

/// `#[derive(Tag)]` on invalid input.
pub fn tag(node: &DeriveInput, krate: &TokenStream, errors: syn::Error) -> TokenStream {
    let errors = errors.into_compile_error();
    // A stub is only possible for a concrete struct or enum; a union or a generic type gets
    // the errors alone.
    let stub_possible = node.generics.params.is_empty() && !matches!(node.data, Data::Union(_));
    if !stub_possible {
        return errors;
    }
    let ident = &node.ident;
    let stub = wrap_in_const(quote! {
        impl #krate::Tag for #ident {
            const NAME: &'static str = "";
            const ID: u64 = 0;
        }
    });
    quote!(#errors #stub)
}

/// `#[derive(Tags)]` on invalid input.
pub fn tags(node: &DeriveInput, krate: &TokenStream, errors: syn::Error) -> TokenStream {
    let errors = errors.into_compile_error();
    if !node.generics.params.is_empty() {
        return errors;
    }
    let ident = &node.ident;
    let stub = wrap_in_const(quote! {
        impl #krate::Tags for #ident {
            const IDS: &'static [u64] = &[];

            fn from_message(
                msg: #krate::Message,
            ) -> #krate::__private::Result<Self, #krate::FromMessageError> {
                #krate::__private::Result::Err(#krate::FromMessageError::Unlisted(msg))
            }
        }
    });
    quote!(#errors #stub)
}
