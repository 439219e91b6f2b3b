//! `#[command]` and `#[event]`: parse the arguments and the function,
//! validate them, and expand to the user's function plus a small
//! registration: a thunk that calls the generic runtime pipeline, a static
//! typed entry, and an `inventory` record.

use proc_macro2::{Span, TokenStream};
use quote::{ToTokens, quote, quote_spanned};
use syn::ext::IdentExt;
use syn::spanned::Spanned;
use syn::{FnArg, GenericArgument, ItemFn, LitStr, Path, PathArguments, ReturnType, Type};

use crate::attr::{Attr, Errors, boolean, millis, set_checked_string, skip_value, syntax, unknown_key};
use crate::subject::{check_publish_subject, check_queue};

#[derive(Clone, Copy, PartialEq)]
pub(crate) enum Kind {
    Command,
    Event,
}

impl Kind {
    fn attr(self) -> &'static str {
        match self {
            Kind::Command => "#[command]",
            Kind::Event => "#[event]",
        }
    }
}

const KEYS: &[&str] = &["subject", "queue", "timeout", "idempotent", "crate"];

struct Args {
    subject: Option<LitStr>,
    queue: Option<LitStr>,
    timeout_ms: Option<u64>,
    idempotent: Option<bool>,
    krate: Path,
}

/// What the signature says, once checked.
struct Signature<'a> {
    message: &'a Type,
    context: Option<&'a Type>,
    /// The `T` of a written `Result<T, E>`, when it can be read off.
    ok: Option<&'a Type>,
}

pub(crate) fn expand(kind: Kind, args: TokenStream, item: TokenStream) -> TokenStream {
    let mut errors = Errors::default();
    let args = parse_args(kind, args, &mut errors);
    let func: ItemFn = match syn::parse2(item.clone()) {
        Ok(func) => func,
        Err(_) => {
            errors.span(Span::call_site(), format!("{} goes on an `async fn`", kind.attr()));
            let errors = errors.to_compile_errors();
            return quote!(#item #errors);
        }
    };
    let sig = check_signature(kind, &func, &mut errors);
    if !errors.is_empty() {
        // Keep the user's function so one mistake does not become twenty.
        let errors = errors.to_compile_errors();
        return quote!(#func #errors);
    }
    let registration = registration(kind, &args, &func, &sig.expect("no errors means a signature"));
    crate::debug_print(kind.attr(), &registration);
    quote!(#func #registration)
}

fn parse_args(kind: Kind, args: TokenStream, errors: &mut Errors) -> Args {
    let mut subject = Attr::new("subject");
    let mut queue = Attr::new("queue");
    let mut timeout = Attr::new("timeout");
    let mut idempotent = Attr::new("idempotent");
    let mut krate = Attr::new("crate");
    let parser = syn::meta::parser(|meta| {
        if meta.path.is_ident("subject") {
            set_checked_string(&meta, "\"orders.create\"", check_publish_subject, &mut subject, errors);
        } else if meta.path.is_ident("queue") {
            set_checked_string(&meta, "\"order-workers\"", check_queue, &mut queue, errors);
        } else if meta.path.is_ident("timeout") {
            timeout.set(&meta.path, millis(&meta), errors);
        } else if meta.path.is_ident("idempotent") {
            // `idempotent` alone means true; `idempotent = false` opts out of
            // a service-wide default.
            let value = if meta.input.peek(syn::Token![=]) { boolean(&meta, "idempotent = false") } else { Ok(true) };
            idempotent.set(&meta.path, value, errors);
        } else if meta.path.is_ident("crate") {
            krate.set(&meta.path, syntax(&meta, "a path", "my_catga"), errors);
        } else {
            errors.push(unknown_key(&meta, kind.attr(), KEYS));
            skip_value(&meta);
        }
        Ok(())
    });
    if let Err(e) = syn::parse::Parser::parse2(parser, args) {
        errors.push(e);
    }
    Args {
        subject: subject.get(),
        queue: queue.get(),
        timeout_ms: timeout.get(),
        idempotent: idempotent.get(),
        krate: krate.get().unwrap_or_else(|| syn::parse_quote!(::catga)),
    }
}

fn check_signature<'a>(kind: Kind, func: &'a ItemFn, errors: &mut Errors) -> Option<Signature<'a>> {
    let sig = &func.sig;
    let name = &sig.ident;
    let expected = match kind {
        Kind::Command => format!("`async fn {name}(cmd: MyCommand, ctx: Context) -> Result<Reply, HandlerError>`"),
        Kind::Event => format!("`async fn {name}(event: MyEvent, ctx: Context) -> Result<(), HandlerError>`"),
    };
    if sig.asyncness.is_none() {
        errors.at(sig.fn_token, format!("a {} handler must be an `async fn`: {expected}", kind.attr()));
    }
    if sig.constness.is_some() {
        errors.at(sig.constness, "a handler cannot be `const`");
    }
    if !sig.generics.params.is_empty() || sig.generics.where_clause.is_some() {
        errors.at(&sig.generics, "a handler cannot be generic: it registers one concrete message type");
    }
    if let Some(variadic) = &sig.variadic {
        errors.at(variadic, "a handler cannot be variadic");
    }
    let mut typed = Vec::new();
    for arg in &sig.inputs {
        match arg {
            FnArg::Receiver(r) => errors.at(r, "a handler is a free function; `self` is not supported"),
            FnArg::Typed(t) => typed.push(&*t.ty),
        }
    }
    if typed.is_empty() || typed.len() > 2 {
        let span = if sig.inputs.is_empty() { sig.paren_token.span.join() } else { sig.inputs.span() };
        errors.span(
            span,
            format!("a handler takes the message and, optionally, a `Context` ({} given): {expected}", typed.len()),
        );
    }
    let ok = match &sig.output {
        ReturnType::Default => {
            errors.at(name, format!("a handler returns a `Result`: {expected}"));
            None
        }
        ReturnType::Type(_, ty) => ok_type(ty),
    };
    if !errors.is_empty() {
        return None;
    }
    Some(Signature { message: typed[0], context: typed.get(1).copied(), ok })
}

/// `T` in `Result<T, E>` (any path ending in `Result`), if written so.
fn ok_type(ty: &Type) -> Option<&Type> {
    let Type::Path(path) = ty else { return None };
    let last = path.path.segments.last()?;
    if last.ident != "Result" {
        return None;
    }
    let PathArguments::AngleBracketed(args) = &last.arguments else { return None };
    args.args.iter().find_map(|a| match a {
        GenericArgument::Type(t) => Some(t),
        _ => None,
    })
}

fn registration(kind: Kind, args: &Args, func: &ItemFn, sig: &Signature) -> TokenStream {
    let krate = &args.krate;
    let private = quote!(#krate::__private);
    let name = &func.sig.ident;
    let name_str = LitStr::new(&name.unraw().to_string(), name.span());
    let message = sig.message;
    let message_span = message.span();

    // The handler as `FnOnce(Message, Context) -> Future`.
    let call = match sig.context {
        Some(_) => quote!(#name),
        None => quote!(|__catga_message, _: #krate::Context| #name(__catga_message)),
    };

    // Checks spanned at the user's code, so rustc reports there.
    let assert_contract = match kind {
        Kind::Command => quote_spanned!(message_span=> #private::assert_command::<#message>();),
        Kind::Event => quote_spanned!(message_span=> #private::assert_event::<#message>();),
    };
    let context_check = sig
        .context
        .map(|ty| quote_spanned!(ty.span()=> let _: fn(#krate::Context) -> #ty = |__catga_context| __catga_context;));
    let ok_check = sig.ok.map(|ok| match kind {
        Kind::Command => quote_spanned!(ok.span()=> #private::assert_reply::<#message, #ok>();),
        Kind::Event => quote_spanned!(ok.span()=> #private::assert_unit::<#ok>();),
    });
    let subject_check = args.subject.as_ref().map(|lit| {
        let type_name = message.to_token_stream().to_string().replace(' ', "");
        let message_text = format!(
            "{}: `subject = {:?}` differs from the subject declared on `{type_name}`; \
             make them equal or drop `subject` here",
            kind.attr(),
            lit.value()
        );
        quote_spanned!(lit.span()=>
            const _: () = ::core::assert!(
                #private::same_subject(<#message as #krate::Message>::SUBJECT, #lit),
                "{}",
                #message_text
            );
        )
    });
    let (entry, thunk_output, dispatch, handler_kind, reply_type) = match kind {
        Kind::Command => (
            quote!(#private::CommandEntry<#message>),
            quote!(-> #private::BoxFuture<'static, ::core::result::Result<<#message as #krate::Command>::Reply, #krate::HandlerError>>),
            quote!(handle_command),
            quote!(Command),
            quote!(::core::any::type_name::<<#message as #krate::Command>::Reply>),
        ),
        Kind::Event => (
            quote!(#private::EventEntry<#message>),
            quote!(),
            quote!(handle_event),
            quote!(Event),
            quote!(::core::any::type_name::<()>),
        ),
    };
    let dispatch_call = quote_spanned!(name.span()=> #private::#dispatch(__catga_delivery, #call));
    let queue = option(args.queue.as_ref());
    let timeout_ms = option(args.timeout_ms.as_ref());
    let idempotent = option(args.idempotent.as_ref());
    let line = quote_spanned!(name.span()=> ::core::line!());

    quote! {
        #[doc(hidden)]
        const _: () = {
            #subject_check

            #[allow(dead_code, clippy::all)]
            fn __catga_checks() {
                #assert_contract
                #ok_check
                #context_check
            }

            fn __catga_thunk(__catga_delivery: #private::Delivery<#message>) #thunk_output {
                #dispatch_call
            }

            static __CATGA_ENTRY: #entry = <#entry>::new(__catga_thunk);

            #private::inventory::submit! {
                #private::HandlerRecord {
                    kind: #private::HandlerKind::#handler_kind,
                    name: #name_str,
                    module: ::core::module_path!(),
                    subject: <#message as #krate::Message>::SUBJECT,
                    queue: #queue,
                    message_type: ::core::any::type_name::<#message>,
                    reply_type: #reply_type,
                    timeout_ms: #timeout_ms,
                    idempotent: #idempotent,
                    file: ::core::file!(),
                    line: #line,
                    entry: &__CATGA_ENTRY,
                }
            }
        };
    }
}

fn option(value: Option<&impl ToTokens>) -> TokenStream {
    match value {
        Some(v) => quote!(::core::option::Option::Some(#v)),
        None => quote!(::core::option::Option::None),
    }
}
