//! The expansion of a checked `#[saga]` block: the step table registered
//! with `inventory`, each step's and compensation's thunk with the checks
//! of its parameters (spanned where the user wrote them), and a waiting
//! step's event handler.

use proc_macro2::TokenStream;
use quote::{ToTokens, format_ident, quote, quote_spanned};
use syn::spanned::Spanned;
use syn::{FnArg, ImplItemFn, ItemImpl, LitStr, Type};

use super::{Checked, SagaArgs, StepKind, ref_param};

/// A step's or compensation's part of the expansion: the checks of its
/// parameters (spanned where the user wrote them), the conditions the table
/// is guarded by (the same), and its thunk (inside the guarded `impl`).
struct Callee {
    checks: TokenStream,
    conditions: Vec<TokenStream>,
    thunk: TokenStream,
}

fn callee(
    block: &ItemImpl,
    args: &SagaArgs,
    data: &Type,
    func: &ImplItemFn,
    thunk: &syn::Ident,
    step: bool,
    wait: Option<&Type>,
) -> Callee {
    let krate = &args.krate;
    let private = quote!(#krate::__private);
    let self_ty = &block.self_ty;
    let ident = &func.sig.ident;
    let ctx_ty = quote!(#krate::saga::SagaContext);
    let (data_ref, check_ref, same_data) = if step {
        (quote!(&'__catga mut), quote!(&mut), quote!(same_mut))
    } else {
        (quote!(&'__catga), quote!(&), quote!(same_ref))
    };
    let mut checks = TokenStream::new();
    let mut conditions = Vec::new();
    let mut data_arg = quote!(__catga_data);
    if let Some(ty) = ref_param(func, 0) {
        checks.extend(if step {
            quote_spanned!(ty.span()=> let _: &mut #ty = __catga_data;)
        } else {
            quote_spanned!(ty.span()=> let _: &#ty = __catga_data;)
        });
        conditions.push(quote!(for<'__catga> #data: #private::Same<#ty>));
        data_arg = quote!(<#data as #private::Same<#ty>>::#same_data(__catga_data));
    }
    let mut ctx_arg = quote!(__catga_ctx);
    let ctx_index = if wait.is_some() { 2 } else { 1 };
    if let Some(ty) = ref_param(func, ctx_index) {
        checks.extend(quote_spanned!(ty.span()=> let _: &#ty = __catga_ctx;));
        conditions.push(quote!(for<'__catga> #ctx_ty: #private::Same<#ty>));
        ctx_arg = quote!(<#ctx_ty as #private::Same<#ty>>::same_ref(__catga_ctx));
    }
    let mut event_arg = quote!(__catga_event);
    if let (Some(event), Some(FnArg::Typed(param))) = (wait, func.sig.inputs.iter().nth(1)) {
        let ty = &*param.ty;
        checks.extend(quote_spanned!(ty.span()=> let _: #ty = __catga_event;));
        conditions.push(quote!(for<'__catga> #event: #private::Same<#ty>));
        event_arg = quote!(<#event as #private::Same<#ty>>::same(__catga_event));
    }
    let check_fn = format_ident!("__catga_check_{}", ident);
    let event_param = wait.map(|event| quote!(__catga_event: #event,));
    let checks = quote! {
        #[allow(dead_code, clippy::all)]
        fn #check_fn(__catga_data: #check_ref #data, #event_param __catga_ctx: &#ctx_ty) {
            #checks
        }
    };
    let result_ty = quote!(#private::BoxFuture<'__catga, ::core::result::Result<(), #krate::saga::StepError>>);
    let thunk = match wait {
        None => {
            let call = quote_spanned!(ident.span()=> __catga_step(<#self_ty>::#ident(#data_arg, #ctx_arg)));
            quote! {
                fn #thunk<'__catga>(__catga_data: #data_ref #data, __catga_ctx: &'__catga #ctx_ty) -> #result_ty {
                    #call
                }
            }
        }
        Some(event) => {
            let call = quote_spanned!(ident.span()=> __catga_step(<#self_ty>::#ident(#data_arg, #event_arg, #ctx_arg)));
            quote! {
                fn #thunk<'__catga>(
                    __catga_data: #data_ref #data,
                    __catga_bytes: &'__catga [u8],
                    __catga_ctx: &'__catga #ctx_ty,
                ) -> #result_ty {
                    #private::wait_step::<#event, _, _>(
                        __catga_bytes,
                        __catga_data,
                        __catga_ctx,
                        |__catga_data, __catga_event, __catga_ctx| #call,
                    )
                }
            }
        }
    };
    Callee { checks, conditions, thunk }
}

pub(super) fn expand_table(block: &ItemImpl, args: &SagaArgs, c: Checked) -> TokenStream {
    let krate = &args.krate;
    let private = quote!(#krate::__private);
    let self_ty = &block.self_ty;
    let data = &c.data;
    let name = match &args.name {
        Some(lit) => lit.clone(),
        None => {
            let text = self_ty.to_token_stream().to_string().replace(' ', "");
            LitStr::new(&text, self_ty.span())
        }
    };

    let mut checks = Vec::new();
    let mut conditions = vec![quote_spanned!(data.span()=> for<'__catga> #data: #private::SagaData)];
    let mut thunks = Vec::new();
    let mut rows = Vec::new();
    let mut recorders = Vec::new();
    for step in &c.steps {
        let ident = &step.func.sig.ident;
        let thunk = format_ident!("__catga_step_{}", ident);
        // A waiting step names its event once, through an alias (spanned at
        // the type it was given), so a mistake there is one error.
        let alias: Option<Type> = step.args.wait.as_ref().map(|given| {
            let alias = format_ident!("__CatgaEvent_{}", ident, span = given.span());
            syn::parse_quote!(#alias)
        });
        let part = callee(block, args, data, step.func, &thunk, true, alias.as_ref());
        checks.push(part.checks);
        conditions.extend(part.conditions);
        thunks.push(part.thunk);
        let kind = match step.kind {
            StepKind::Compensatable => quote!(Compensatable),
            StepKind::Pivot => quote!(Pivot),
            StepKind::Retriable => quote!(Retriable),
        };
        let compensation = match &step.args.compensate {
            Some(comp) => {
                let comp_thunk = format_ident!("__catga_compensate_{}", comp);
                let part = callee(block, args, data, c.compensations[&comp.to_string()], &comp_thunk, false, None);
                checks.push(part.checks);
                conditions.extend(part.conditions);
                thunks.push(part.thunk);
                let comp_name = LitStr::new(&comp.to_string(), comp.span());
                quote!(::core::option::Option::Some((#comp_name, Self::#comp_thunk)))
            }
            None => quote!(::core::option::Option::None),
        };
        // Retriable steps are retried 3 times unless they say otherwise.
        let retry = step.args.retry.unwrap_or(if step.kind == StepKind::Retriable { 3 } else { 0 });
        let timeout = match step.args.timeout_ms {
            Some(ms) => quote!(::core::option::Option::Some(#ms)),
            None => quote!(::core::option::Option::None),
        };
        let step_name = LitStr::new(&ident.to_string(), ident.span());
        let (run, wait) = match (&step.args.wait, &step.args.key, &alias) {
            (Some(given), Some(key), Some(event)) => {
                let key_name = LitStr::new(&key.to_string(), key.span());
                let within = match step.args.within_ms {
                    Some(ms) => quote!(::core::option::Option::Some(#ms)),
                    None => quote!(::core::option::Option::None),
                };
                let (check, condition, recorder) = wait_parts(args, &name, ident, (given, event), key);
                checks.push(check);
                conditions.push(condition);
                recorders.push(recorder);
                (
                    quote!(#private::no_event),
                    quote!(::core::option::Option::Some(#private::SagaWait {
                        event: ::core::any::type_name::<#event>,
                        key: #key_name,
                        within_ms: #within,
                        run: Self::#thunk,
                    })),
                )
            }
            _ => (quote!(Self::#thunk), quote!(::core::option::Option::None)),
        };
        rows.push(quote! {
            #private::SagaStep {
                name: #step_name,
                kind: #private::SagaStepKind::#kind,
                run: #run,
                compensation: #compensation,
                retry: #retry,
                timeout_ms: #timeout,
                wait: #wait,
            }
        });
    }
    let deadline = match args.deadline_ms {
        Some(ms) => quote!(::core::option::Option::Some(#ms)),
        None => quote!(::core::option::Option::None),
    };
    let line = quote_spanned!(self_ty.span()=> ::core::line!());
    // The pipeline's bounds on a step's future, restated here so that a step
    // that does not meet them is reported at its own code.
    let self_span = self_ty.span();
    let send = quote_spanned!(self_span=> ::core::marker::Send + '__catga);
    let into_error = quote_spanned!(self_span=> ::core::convert::Into<#krate::HandlerError>);
    quote! {
        #[doc(hidden)]
        const _: () = {
            #(#checks)*

            fn __catga_step<'__catga, F, E>(
                __catga_step: F,
            ) -> #private::BoxFuture<'__catga, ::core::result::Result<(), #krate::saga::StepError>>
            where
                F: ::core::future::Future<Output = ::core::result::Result<(), E>> + #send,
                E: #into_error,
            {
                ::std::boxed::Box::pin(#private::StepFuture::new(__catga_step))
            }

            /// The step table and the registration, guarded by the checks'
            /// conditions (see `catga::__private`).
            struct __CatgaSaga;

            use #private::UncheckedSaga as _;
            impl #private::UncheckedSaga<#data> for __CatgaSaga {}

            #[allow(clippy::all)]
            impl __CatgaSaga
            where
                #(#conditions,)*
            {
                const STEPS: &'static [#private::SagaStep<#data>] = &[#(#rows),*];
                const ENTRY: &'static dyn #krate::saga::SagaEntry = #private::saga_entry(&__CATGA_SAGA);

                #(#thunks)*
            }

            static __CATGA_SAGA: #private::SagaDef<#data> = #private::SagaDef {
                name: #name,
                steps: <__CatgaSaga>::STEPS,
                deadline_ms: #deadline,
                data_type: ::core::any::type_name::<#data>,
                file: ::core::file!(),
                line: #line,
            };

            // Unconditional: a data type that cannot be persisted is reported
            // here, by `Saga::Data`'s bounds, and nowhere else (a conditional
            // impl would move the error to every `start_saga` call).
            #[automatically_derived]
            impl #krate::saga::Saga for #self_ty {
                type Data = #data;
                fn definition() -> &'static #private::SagaDef<#data> {
                    &__CATGA_SAGA
                }
            }

            #private::inventory::submit! {
                #krate::saga::SagaRecord {
                    name: #name,
                    file: ::core::file!(),
                    line: #line,
                    entry: <__CatgaSaga>::ENTRY,
                }
            }

            #(#recorders)*
        };
    }
}

/// A waiting step's parts: the check that the event is an event and has
/// the key field (spanned where they were written), the condition the table
/// is guarded by, and the handler that records the event for its saga (a
/// queue group per step, subscribed wherever the saga runs), guarded by
/// the same (see `catga::__private`).
fn wait_parts(
    args: &SagaArgs,
    saga: &LitStr,
    step: &syn::Ident,
    (given, event): (&Type, &Type),
    key: &syn::Ident,
) -> (TokenStream, TokenStream, TokenStream) {
    let krate = &args.krate;
    let private = quote!(#krate::__private);
    let check_fn = format_ident!("__catga_wait_check_{}", step);
    let is_event = quote_spanned!(given.span()=> #private::is_event::<#event>(););
    let key_text = quote_spanned!(key.span()=> ::std::string::ToString::to_string(&__catga_event.#key));
    let check = quote! {
        #[allow(non_camel_case_types)]
        type #event = #given;

        #[allow(dead_code, clippy::all)]
        fn #check_fn(__catga_event: &#event) -> ::std::string::String {
            #is_event
            #key_text
        }
    };
    let condition = quote!(for<'__catga> #event: #krate::Event);
    let guard = format_ident!("__CatgaWait_{}", step);
    let step_name = LitStr::new(&step.to_string(), step.span());
    let handler_name = LitStr::new(&format!("{}.{}", saga.value(), step), step.span());
    let queue = LitStr::new(&format!("saga-{}-{}", saga.value(), step), step.span());
    let recorder = quote! {
        #[allow(non_camel_case_types)]
        struct #guard;
        use #private::Unchecked as _;
        impl #private::Unchecked for #guard {}

        #[allow(clippy::all)]
        impl #guard
        where
            for<'__catga> #event: #krate::Event,
        {
            const REGISTRATION: #private::Registration = #private::Registration::event::<#event>(&Self::ENTRY);
            const ENTRY: #private::EventEntry<#event> = #private::EventEntry::new(Self::record);

            fn record(__catga_delivery: #private::Delivery<#event>) {
                #private::handle_event(__catga_delivery, |__catga_event: #event, __catga_ctx: #krate::Context| {
                    let __catga_key = #check_fn(&__catga_event);
                    #private::saga_event(__catga_ctx, #saga, #step_name, __catga_key, __catga_event)
                })
            }
        }

        #private::inventory::submit! {
            #private::HandlerRecord {
                kind: #private::HandlerKind::Event,
                name: #handler_name,
                module: ::core::module_path!(),
                subject: <#guard>::REGISTRATION.subject,
                queue: ::core::option::Option::Some(#queue),
                message_type: <#guard>::REGISTRATION.message_type,
                reply_type: <#guard>::REGISTRATION.reply_type,
                timeout_ms: ::core::option::Option::None,
                idempotent: ::core::option::Option::Some(false),
                file: ::core::file!(),
                line: ::core::line!(),
                saga: ::core::option::Option::Some(#saga),
                entry: <#guard>::REGISTRATION.entry,
            }
        }
    };
    (check, condition, recorder)
}
