//! placeholder
use proc_macro::TokenStream;
#[proc_macro_derive(Command, attributes(catga))] pub fn derive_command(i: TokenStream) -> TokenStream { let _ = i; TokenStream::new() }
#[proc_macro_derive(Event, attributes(catga))] pub fn derive_event(i: TokenStream) -> TokenStream { let _ = i; TokenStream::new() }
#[proc_macro_attribute] pub fn command(_a: TokenStream, i: TokenStream) -> TokenStream { i }
#[proc_macro_attribute] pub fn event(_a: TokenStream, i: TokenStream) -> TokenStream { i }
