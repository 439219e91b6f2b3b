//! `#[command]` and `#[event]`: parse the arguments and the function,
//! validate them, and expand to the user's function plus a small
//! registration: spanned checks, then (guarded by what they check, see
//! `catga::__private`) a thunk that calls the generic runtime pipeline, a
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
    /// The written return type.
    output: &'a Type,
    /// The `T` of a written `Result<T, E>`, when it can be read off.
    ok: Option<&'a Type>,
    /// The `E` of a written `Result<T, E>`, when it can be read off.
    err: Option<&'a Type>,
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
    let Some(sig) = sig.filter(|_| errors.is_empty()) else {
        // Keep the user's function so one mistake does not become twenty.
        let errors = errors.to_compile_errors();
        return quote!(#func #errors);
    };
    let registration = registration(kind, &args, &func, &sig);
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
    // Both parameters are owned: the handler's future outlives the delivery.
    for (ty, what) in typed.iter().zip(["message", "`Context`"]) {
        if let Type::Reference(r) = ty {
            errors.at(r, format!("a handler takes its {what} by value, not by reference: {expected}"));
        }
    }
    if typed.is_empty() || typed.len() > 2 {
        let span = if sig.inputs.is_empty() { sig.paren_token.span.join() } else { sig.inputs.span() };
        errors.span(
            span,
            format!("a handler takes the message and, optionally, a `Context` ({} given): {expected}", typed.len()),
        );
    }
    let output = match &sig.output {
        ReturnType::Default => {
            errors.at(name, format!("a handler returns a `Result`: {expected}"));
            None
        }
        ReturnType::Type(_, ty) => Some(&**ty),
    };
    let output = output.filter(|_| errors.is_empty())?;
    let (ok, err) = result_types(output);
    Some(Signature { message: typed[0], context: typed.get(1).copied(), output, ok, err })
}

/// `T` and `E` in `Result<T, E>` (any path ending in `Result`), as far as
/// written so.
fn result_types(ty: &Type) -> (Option<&Type>, Option<&Type>) {
    let Type::Path(path) = ty else { return (None, None) };
    let Some(last) = path.path.segments.last() else { return (None, None) };
    let PathArguments::AngleBracketed(args) = &last.arguments else { return (None, None) };
    if last.ident != "Result" {
        return (None, None);
    }
    let mut types = args.args.iter().filter_map(|a| match a {
        GenericArgument::Type(t) => Some(t),
        _ => None,
    });
    (types.next(), types.next())
}

/// How the handler's output reaches the pipeline.
#[derive(Clone, Copy)]
enum Output<'a> {
    /// Written `Result<T, ..>` with a `T` the pipeline takes as it is (a
    /// command's `T`; an event's `()`): the handler is passed directly.
    Direct(&'a Type),
    /// Anything else (an alias; an event's `Ok` not written `()`): read
    /// through `HandlerResult`, whose adapter the handler's future is
    /// wrapped in.
    Adapted,
}

impl<'a> Output<'a> {
    fn of(kind: Kind, sig: &Signature<'a>) -> Self {
        match (kind, sig.ok) {
            (Kind::Command, Some(ok)) => Output::Direct(ok),
            (Kind::Event, Some(ok)) if is_unit(ok) => Output::Direct(ok),
            _ => Output::Adapted,
        }
    }
}

/// The names an expansion uses, once.
struct Names<'a> {
    kind: Kind,
    krate: &'a Path,
    private: TokenStream,
    sig: &'a Signature<'a>,
    output: Output<'a>,
}

fn registration(kind: Kind, args: &Args, func: &ItemFn, sig: &Signature) -> TokenStream {
    let krate = &args.krate;
    let n = Names { kind, krate, private: quote!(#krate::__private), sig, output: Output::of(kind, sig) };
    let private = &n.private;
    let name = &func.sig.ident;
    let name_str = LitStr::new(&name.unraw().to_string(), name.span());
    let checks = checks(&n);
    let conditions = conditions(&n);
    let guarded = guarded(&n, name);
    let subject_check = args.subject.as_ref().map(|lit| subject_check(&n, lit));
    let handler_kind = match kind {
        Kind::Command => quote!(Command),
        Kind::Event => quote!(Event),
    };
    let queue = option(args.queue.as_ref());
    let timeout_ms = option(args.timeout_ms.as_ref());
    let idempotent = option(args.idempotent.as_ref());
    let line = quote_spanned!(name.span()=> ::core::line!());

    quote! {
        #[doc(hidden)]
        const _: () = {
            #[allow(dead_code, clippy::all)]
            fn __catga_checks() {
                #(#checks)*
            }

            /// The registration, guarded by the checks' conditions (see
            /// `catga::__private`).
            struct __CatgaHandler;

            use #private::Unchecked as _;
            impl #private::Unchecked for __CatgaHandler {}

            #[allow(clippy::all)]
            impl __CatgaHandler
            where
                #(#conditions,)*
            {
                #guarded
            }

            #subject_check

            #private::inventory::submit! {
                #private::HandlerRecord {
                    kind: #private::HandlerKind::#handler_kind,
                    name: #name_str,
                    module: ::core::module_path!(),
                    subject: <__CatgaHandler>::REGISTRATION.subject,
                    queue: #queue,
                    message_type: <__CatgaHandler>::REGISTRATION.message_type,
                    reply_type: <__CatgaHandler>::REGISTRATION.reply_type,
                    timeout_ms: #timeout_ms,
                    idempotent: #idempotent,
                    file: ::core::file!(),
                    line: #line,
                    saga: ::core::option::Option::None,
                    entry: <__CatgaHandler>::REGISTRATION.entry,
                }
            }
        };
    }
}

/// The checks, each spanned at the user's code it is about and each the
/// only place its mistake is reported. They share one body, so where two
/// would report the same thing at the same place, rustc reports it once.
fn checks(n: &Names) -> Vec<TokenStream> {
    let mut checks = vec![contract_check(n)];
    checks.extend(output_checks(n));
    checks.extend(n.sig.context.map(|ty| context_check(n, ty)));
    checks
}

/// The message type has the handler's contract (and, for a command whose
/// `Ok` type is written out, that type is the reply: one check, so a type
/// without a contract is not also a wrong reply).
fn contract_check(n: &Names) -> TokenStream {
    let (krate, message) = (n.krate, n.sig.message);
    match (n.kind, n.output) {
        (Kind::Command, Output::Direct(ok)) => quote_spanned!(message.span()=>
            fn __catga_message_is_a_command(__catga: #message) -> impl #krate::Command<Reply = #ok> { __catga }
        ),
        (Kind::Command, Output::Adapted) => quote_spanned!(message.span()=>
            let _: ::core::marker::PhantomData<<#message as #krate::Command>::Reply>;
        ),
        (Kind::Event, _) => quote_spanned!(message.span()=>
            fn __catga_message_is_an_event(__catga: #message) -> impl #krate::Event { __catga }
        ),
    }
}

/// What an adapted output must be: a `HandlerResult` whose `Ok` is the
/// command's reply, or `()` for an event.
fn output_checks(n: &Names) -> Vec<TokenStream> {
    let Output::Adapted = n.output else { return Vec::new() };
    let (krate, private, message, output) = (n.krate, &n.private, n.sig.message, n.sig.output);
    let result = quote_spanned!(output.span()=> <#output as #private::HandlerResult>);
    match (n.kind, n.sig.ok) {
        (Kind::Command, _) => {
            let reply = quote_spanned!(message.span()=> <#message as #krate::Command>::Reply);
            vec![
                quote_spanned!(output.span()=> let _: ::core::marker::PhantomData<#result::Ok>;),
                quote_spanned!(output.span()=>
                    let _: ::core::marker::PhantomData<#reply> = ::core::marker::PhantomData::<#result::Ok>;
                ),
            ]
        }
        (Kind::Event, Some(ok)) => vec![
            quote_spanned!(ok.span()=> let _: ::core::marker::PhantomData<<#ok as #private::Unit>::Itself>;),
            quote_spanned!(output.span()=> let _: ::core::marker::PhantomData<#result::Ok>;),
        ],
        (Kind::Event, None) => vec![quote_spanned!(output.span()=>
            let _: ::core::marker::PhantomData<<#result::Ok as #private::Unit>::Itself>;
        )],
    }
}

/// The second parameter is a `Context`.
fn context_check(n: &Names, ty: &Type) -> TokenStream {
    let krate = n.krate;
    quote_spanned!(ty.span()=> let _: fn(#krate::Context) -> #ty = |__catga_context| __catga_context;)
}

/// The conditions the registration is guarded by: what the checks check.
/// Higher-ranked (`for<'__catga>`), so rustc takes them as assumptions
/// inside the `impl` instead of refusing them as "trivial bounds".
fn conditions(n: &Names) -> Vec<TokenStream> {
    let (krate, private, message, output) = (n.krate, &n.private, n.sig.message, n.sig.output);
    let mut conditions = match (n.kind, n.output) {
        (Kind::Command, Output::Direct(ok)) => {
            vec![quote!(for<'__catga> #message: #krate::Command<Reply = #ok>)]
        }
        (Kind::Command, Output::Adapted) => vec![
            quote!(for<'__catga> #message: #krate::Command),
            quote!(for<'__catga> #output: #private::HandlerResult<Ok = <#message as #krate::Command>::Reply>),
        ],
        (Kind::Event, Output::Direct(_)) => vec![quote!(for<'__catga> #message: #krate::Event)],
        (Kind::Event, Output::Adapted) => vec![
            quote!(for<'__catga> #message: #krate::Event),
            quote!(for<'__catga> #output: #private::HandlerResult<Ok = ()>),
        ],
    };
    if let Some(ty) = n.sig.context {
        conditions.push(quote!(for<'__catga> #krate::Context: #private::Same<#ty>));
    }
    conditions
}

/// The guarded items: the registration, the entry, the thunk, and the
/// pipeline call with its bounds restated here, so that a handler that does
/// not meet them (a future that is not `Send`, an error type that is not a
/// `HandlerError`) is reported at its own code.
fn guarded(n: &Names, name: &syn::Ident) -> TokenStream {
    let (krate, private, message) = (n.krate, &n.private, n.sig.message);
    let call = match n.sig.context {
        Some(ty) => quote_spanned!(name.span()=>
            #name(__catga_message, <#krate::Context as #private::Same<#ty>>::same(__catga_context))
        ),
        None => quote_spanned!(name.span()=> #name(__catga_message)),
    };
    let call = match n.output {
        Output::Direct(_) => call,
        Output::Adapted => quote_spanned!(name.span()=> #private::Outcome::new(#call)),
    };
    let context_param = match n.sig.context {
        Some(_) => quote!(__catga_context),
        None => quote!(_),
    };
    let run = quote_spanned!(name.span()=>
        Self::__catga_pipeline(__catga_delivery, |__catga_message, #context_param: #krate::Context| #call)
    );
    let send = quote_spanned!(name.span()=> ::core::marker::Send + 'static);
    let err_span = n.sig.err.map(Spanned::span).unwrap_or_else(|| n.sig.output.span());
    let into_error = quote_spanned!(err_span=> ::core::convert::Into<#krate::HandlerError> + 'static);
    let handler = quote!(F: ::core::ops::FnOnce(#message, #krate::Context) -> Fut + ::core::marker::Send + 'static);
    match n.kind {
        Kind::Command => {
            let result = quote!(::core::result::Result<<#message as #krate::Command>::Reply, #krate::HandlerError>);
            quote! {
                const REGISTRATION: #private::Registration =
                    #private::Registration::command::<#message>(&Self::__CATGA_ENTRY);
                const __CATGA_ENTRY: #private::CommandEntry<#message> = #private::CommandEntry::new(Self::__catga_thunk);

                fn __catga_thunk(__catga_delivery: #private::Delivery<#message>) -> #private::BoxFuture<'static, #result> {
                    #run
                }

                fn __catga_pipeline<F, Fut, E>(
                    __catga_delivery: #private::Delivery<#message>,
                    __catga_handler: F,
                ) -> #private::BoxFuture<'static, #result>
                where
                    #handler,
                    Fut: ::core::future::Future<
                        Output = ::core::result::Result<<#message as #krate::Command>::Reply, E>
                    > + #send,
                    E: #into_error,
                {
                    #private::handle_command(__catga_delivery, __catga_handler)
                }
            }
        }
        Kind::Event => quote! {
            const REGISTRATION: #private::Registration =
                #private::Registration::event::<#message>(&Self::__CATGA_ENTRY);
            const __CATGA_ENTRY: #private::EventEntry<#message> = #private::EventEntry::new(Self::__catga_thunk);

            fn __catga_thunk(__catga_delivery: #private::Delivery<#message>) {
                #run
            }

            fn __catga_pipeline<F, Fut, E>(__catga_delivery: #private::Delivery<#message>, __catga_handler: F)
            where
                #handler,
                Fut: ::core::future::Future<Output = ::core::result::Result<(), E>> + #send,
                E: #into_error,
            {
                #private::handle_event(__catga_delivery, __catga_handler)
            }
        },
    }
}

/// `subject = "..."` on the handler equals the message type's (checked only
/// once the type is known to have a contract).
fn subject_check(n: &Names, lit: &LitStr) -> TokenStream {
    let private = &n.private;
    let message = n.sig.message;
    let type_name = message.to_token_stream().to_string().replace(' ', "");
    let message_text = format!(
        "{}: `subject = {:?}` differs from the subject declared on `{type_name}`; \
         make them equal or drop `subject` here",
        n.kind.attr(),
        lit.value()
    );
    quote_spanned!(lit.span()=>
        const _: () = ::core::assert!(
            !<__CatgaHandler>::REGISTRATION.checked
                || #private::same_subject(<__CatgaHandler>::REGISTRATION.subject, #lit),
            "{}",
            #message_text
        );
    )
}

/// Whether a type is written `()`.
fn is_unit(ty: &Type) -> bool {
    matches!(ty, Type::Tuple(t) if t.elems.is_empty())
}

fn option(value: Option<&impl ToTokens>) -> TokenStream {
    match value {
        Some(v) => quote!(::core::option::Option::Some(#v)),
        None => quote!(::core::option::Option::None),
    }
}
