//! Attribute arguments: one generic setter for every key (a key given twice
//! is an error), unknown keys listed against the allowed ones, and an error
//! collector so every mistake is reported at once.

use proc_macro2::{Span, TokenStream};
use quote::ToTokens;
use syn::meta::ParseNestedMeta;
use syn::{Expr, ExprLit, Lit, LitStr};

/// Collects errors; reports them all together.
#[derive(Default)]
pub(crate) struct Errors(Option<syn::Error>);

impl Errors {
    pub(crate) fn push(&mut self, error: syn::Error) {
        match &mut self.0 {
            Some(all) => all.combine(error),
            None => self.0 = Some(error),
        }
    }

    pub(crate) fn at(&mut self, tokens: impl ToTokens, message: impl std::fmt::Display) {
        self.push(syn::Error::new_spanned(tokens, message));
    }

    pub(crate) fn span(&mut self, span: Span, message: impl std::fmt::Display) {
        self.push(syn::Error::new(span, message));
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_none()
    }

    pub(crate) fn to_compile_errors(&self) -> TokenStream {
        self.0.as_ref().map(syn::Error::to_compile_error).unwrap_or_default()
    }
}

/// One attribute key's value, remembering where it was set.
pub(crate) struct Attr<T> {
    name: &'static str,
    value: Option<T>,
}

impl<T> Attr<T> {
    pub(crate) fn new(name: &'static str) -> Self {
        Attr { name, value: None }
    }

    /// Set the value; a second setting is an error at the key.
    pub(crate) fn set(&mut self, key: &syn::Path, value: T, errors: &mut Errors) {
        if self.value.is_some() {
            errors.at(key, format!("`{}` is given twice", self.name));
        } else {
            self.value = Some(value);
        }
    }

    pub(crate) fn get(self) -> Option<T> {
        self.value
    }

    pub(crate) fn as_ref(&self) -> Option<&T> {
        self.value.as_ref()
    }
}

/// Read `key = "literal"`; anything but a string literal is an error that
/// shows the expected form.
pub(crate) fn string_value(meta: &ParseNestedMeta, example: &str) -> syn::Result<LitStr> {
    let key = meta.path.to_token_stream().to_string();
    let expr: Expr = meta.value()?.parse()?;
    match expr {
        Expr::Lit(ExprLit { lit: Lit::Str(s), .. }) => Ok(s),
        other => {
            Err(syn::Error::new_spanned(other, format!("`{key}` takes a string literal, like `{key} = {example}`")))
        }
    }
}

/// Read `key = "literal"` and set it, reporting what `check` says of it at
/// the literal (the value is set even then, so one bad value does not also
/// break everything that uses it).
pub(crate) fn set_checked_string(
    meta: &ParseNestedMeta,
    example: &str,
    check: impl FnOnce(&str) -> Result<(), String>,
    attr: &mut Attr<LitStr>,
    errors: &mut Errors,
) {
    match string_value(meta, example) {
        Ok(lit) => {
            if let Err(e) = check(&lit.value()) {
                errors.at(&lit, e);
            }
            attr.set(&meta.path, lit, errors);
        }
        Err(e) => errors.push(e),
    }
}

/// Read `key = <syntax>` (a type, a path) and set it.
pub(crate) fn set_parsed<T: syn::parse::Parse>(meta: &ParseNestedMeta, attr: &mut Attr<T>, errors: &mut Errors) {
    match meta.value().and_then(|v| v.parse::<T>()) {
        Ok(value) => attr.set(&meta.path, value, errors),
        Err(e) => errors.push(e),
    }
}

/// Read `key = "5s"` (a duration) as milliseconds and set it.
pub(crate) fn set_millis(meta: &ParseNestedMeta, attr: &mut Attr<u64>, errors: &mut Errors) {
    match string_value(meta, "\"5s\"") {
        Ok(lit) => match crate::subject::parse_millis(&lit.value()) {
            Ok(ms) => attr.set(&meta.path, ms, errors),
            Err(e) => errors.at(&lit, e),
        },
        Err(e) => errors.push(e),
    }
}

/// Read `key = true|false`; anything else is an error showing the form.
pub(crate) fn bool_value(meta: &ParseNestedMeta, example: &str) -> syn::Result<bool> {
    let key = meta.path.to_token_stream().to_string();
    let expr: Expr = meta.value()?.parse()?;
    match expr {
        Expr::Lit(ExprLit { lit: Lit::Bool(b), .. }) => Ok(b.value),
        other => Err(syn::Error::new_spanned(other, format!("`{key}` takes `true` or `false`, like `{example}`"))),
    }
}

/// The error for a key the macro does not know, listing the allowed keys.
pub(crate) fn unknown_key(meta: &ParseNestedMeta, what: &str, allowed: &[&str]) -> syn::Error {
    let key = meta.path.to_token_stream().to_string().replace(' ', "");
    let list = allowed.iter().map(|k| format!("`{k}`")).collect::<Vec<_>>().join(", ");
    meta.error(format!("unknown key `{key}` in {what}; the allowed keys are {list}"))
}

/// Skip the rest of an unknown key's value so parsing can go on.
pub(crate) fn skip_value(meta: &ParseNestedMeta) {
    if meta.input.peek(syn::Token![=]) {
        let _ = meta.value().and_then(|v| v.parse::<Expr>());
    } else if meta.input.peek(syn::token::Paren) {
        let _ = meta.parse_nested_meta(|m| {
            skip_value(&m);
            Ok(())
        });
    }
}
