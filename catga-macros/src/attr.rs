//! Attribute arguments: one generic setter for every key (a key given twice
//! is an error), unknown keys listed against the allowed ones, and an error
//! collector so every mistake is reported at once.
//!
//! One mistake, one error: a value of the wrong form is one error at the
//! value; the value is skipped (up to the next `,`) and the other keys are
//! still read, and the key counts as given, so no "needs a ..." follows.

use proc_macro2::{Span, TokenStream, TokenTree};
use quote::ToTokens;
use syn::meta::ParseNestedMeta;
use syn::parse::ParseStream;
use syn::parse::discouraged::Speculative;
use syn::{LitBool, LitStr};

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

/// One attribute key: its value, whether it was given at all (even with a
/// value of the wrong form), and the error of such a value.
pub(crate) struct Attr<T> {
    name: &'static str,
    given: bool,
    value: Option<T>,
}

impl<T> Attr<T> {
    pub(crate) fn new(name: &'static str) -> Self {
        Attr { name, given: false, value: None }
    }

    /// Set what was read for the key: a value, or the error that reading
    /// it gave (reported, and the key still counts as given). A second
    /// setting is an error at the key.
    pub(crate) fn set(&mut self, key: &syn::Path, value: syn::Result<T>, errors: &mut Errors) {
        if self.given {
            errors.at(key, format!("`{}` is given twice", self.name));
            return;
        }
        self.given = true;
        match value {
            Ok(value) => self.value = Some(value),
            Err(e) => errors.push(e),
        }
    }

    /// Whether the key was written, whatever its value.
    pub(crate) fn given(&self) -> bool {
        self.given
    }

    pub(crate) fn get(self) -> Option<T> {
        self.value
    }

    pub(crate) fn as_ref(&self) -> Option<&T> {
        self.value.as_ref()
    }
}

/// The key as written (`crate`, `subject`).
fn key_name(meta: &ParseNestedMeta) -> String {
    meta.path.to_token_stream().to_string().replace(' ', "")
}

/// Read `key = <value>` with `parse`. Anything else is `message` at what was
/// written instead (or at the key, if no value was), and the value is
/// skipped, so reading goes on with the next key.
pub(crate) fn read<T>(
    meta: &ParseNestedMeta,
    message: impl std::fmt::Display,
    parse: impl FnOnce(ParseStream) -> syn::Result<T>,
) -> syn::Result<T> {
    if !meta.input.peek(syn::Token![=]) {
        // At the key (made before skipping, which would widen it).
        let error = meta.error(message);
        skip_value(meta);
        return Err(error);
    }
    let input = match meta.value() {
        Ok(input) => input,
        Err(_) => return Err(meta.error(message)),
    };
    let fork = input.fork();
    if let Ok(value) = parse(&fork)
        && (fork.is_empty() || fork.peek(syn::Token![,]))
    {
        // The value parsed and nothing is left before the next key: take it.
        input.advance_to(&fork);
        return Ok(value);
    }
    let written = skip_to_comma(input);
    if written.is_empty() {
        return Err(meta.error(message));
    }
    Err(syn::Error::new_spanned(written, message))
}

/// Read `key = "literal"`.
pub(crate) fn string(meta: &ParseNestedMeta, example: &str) -> syn::Result<LitStr> {
    let key = key_name(meta);
    read(meta, format!("`{key}` takes a string literal, like `{key} = {example}`"), |input| input.parse())
}

/// Read `key = <a type or path>`; `what` names it ("a type", "a path") and
/// `example` shows the form.
pub(crate) fn syntax<T: syn::parse::Parse>(meta: &ParseNestedMeta, what: &str, example: &str) -> syn::Result<T> {
    let key = key_name(meta);
    read(meta, format!("`{key}` takes {what}, like `{key} = {example}`"), |input| input.parse())
}

/// Read `key = true|false`.
pub(crate) fn boolean(meta: &ParseNestedMeta, example: &str) -> syn::Result<bool> {
    let key = key_name(meta);
    read(meta, format!("`{key}` takes `true` or `false`, like `{example}`"), |input| {
        input.parse::<LitBool>().map(|b| b.value)
    })
}

/// Read `key = "5s"` (a duration) as milliseconds.
pub(crate) fn millis(meta: &ParseNestedMeta) -> syn::Result<u64> {
    let lit = string(meta, "\"5s\"")?;
    crate::subject::parse_millis(&lit.value()).map_err(|e| syn::Error::new_spanned(&lit, e))
}

/// Read a bare flag (`durable`); a value after it is `message` at the key.
pub(crate) fn flag(meta: &ParseNestedMeta, message: &str) -> syn::Result<()> {
    if meta.input.is_empty() || meta.input.peek(syn::Token![,]) {
        return Ok(());
    }
    let error = meta.error(message);
    skip_value(meta);
    Err(error)
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
    let value = string(meta, example);
    if let Ok(lit) = &value
        && let Err(e) = check(&lit.value())
    {
        errors.at(lit, e);
    }
    attr.set(&meta.path, value, errors);
}

/// The error for a key the macro does not know, listing the allowed keys.
pub(crate) fn unknown_key(meta: &ParseNestedMeta, what: &str, allowed: &[&str]) -> syn::Error {
    let key = key_name(meta);
    let list = allowed.iter().map(|k| format!("`{k}`")).collect::<Vec<_>>().join(", ");
    meta.error(format!("unknown key `{key}` in {what}; the allowed keys are {list}"))
}

/// Skip whatever follows a key (`= value`, `(...)`) so parsing can go on.
pub(crate) fn skip_value(meta: &ParseNestedMeta) {
    let _ = skip_to_comma(meta.input);
}

/// Consume the tokens up to the next `,` that separates keys (one inside
/// `<...>` belongs to the value: `reply = HashMap<String, u64>`), and return
/// them.
fn skip_to_comma(input: ParseStream) -> TokenStream {
    let skip = |input: ParseStream| {
        input.step(|cursor| {
            let mut rest = *cursor;
            let mut skipped = TokenStream::new();
            let mut depth = 0usize;
            let mut after_dash = false;
            while let Some((tt, next)) = rest.token_tree() {
                if let TokenTree::Punct(p) = &tt {
                    match p.as_char() {
                        ',' if depth == 0 => break,
                        '<' => depth += 1,
                        // `->` is not a closing bracket.
                        '>' if !after_dash => depth = depth.saturating_sub(1),
                        _ => {}
                    }
                    after_dash = p.as_char() == '-';
                } else {
                    after_dash = false;
                }
                skipped.extend([tt]);
                rest = next;
            }
            Ok((skipped, rest))
        })
    };
    skip(input).unwrap_or_default()
}
