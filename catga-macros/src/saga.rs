//! `#[saga]` on the `impl` block that holds every step and compensation of a
//! saga: parse the block, check the steps and compensations together (the
//! classic order, compensations that exist with the right shape, each used
//! once), and expand to the block (with `#[step]` removed) plus a static
//! step table registered with `inventory`.

use std::collections::HashMap;

use proc_macro2::{Span, TokenStream};
use quote::{ToTokens, format_ident, quote, quote_spanned};
use syn::spanned::Spanned;
use syn::{FnArg, ImplItem, ImplItemFn, ItemImpl, LitInt, LitStr, Path, ReturnType, Type, TypeReference};

use crate::attr::{Attr, Errors, flag, millis, read, set_checked_string, skip_value, syntax, unknown_key};

const SAGA_KEYS: &[&str] = &["name", "data", "deadline", "crate"];
const STEP_KEYS: &[&str] = &["compensate", "pivot", "retry", "timeout", "wait", "key", "within"];

struct SagaArgs {
    name: Option<LitStr>,
    data: Option<Type>,
    /// `deadline = "10m"`: how long after its start a saga still runs forward.
    deadline_ms: Option<u64>,
    krate: Path,
}

#[derive(Clone, Copy, PartialEq)]
enum StepKind {
    Compensatable,
    Pivot,
    Retriable,
}

struct StepArgs {
    /// `compensate` was given (its function is `compensate`, if it parsed).
    compensates: bool,
    compensate: Option<syn::Ident>,
    pivot: Option<syn::Ident>,
    retry: Option<u32>,
    timeout_ms: Option<u64>,
    /// `wait = Event, key = field, within = "10m"`: the step waits for an
    /// event whose `field` is the saga's id.
    wait: Option<Type>,
    key: Option<syn::Ident>,
    within_ms: Option<u64>,
}

struct StepFn<'a> {
    func: &'a ImplItemFn,
    args: StepArgs,
    kind: StepKind,
}

pub(crate) fn expand(args: TokenStream, item: TokenStream) -> TokenStream {
    let mut errors = Errors::default();
    let args = parse_args(args, &mut errors);
    let mut block: ItemImpl = match syn::parse2(item.clone()) {
        Ok(block) => block,
        Err(_) => {
            errors.span(Span::call_site(), "#[saga] goes on the `impl` block that holds the saga's steps");
            let errors = errors.to_compile_errors();
            return quote!(#item #errors);
        }
    };
    let steps = take_steps(&mut block, &mut errors);
    let registration = check(&block, &args, &steps, &mut errors).map(|checked| expand_table(&block, &args, checked));
    let errors = errors.to_compile_errors();
    // The user's block always comes back (without `#[step]`), so one mistake
    // does not also make every call to its functions an error.
    let out = quote!(#block #registration #errors);
    crate::debug_print("#[saga]", &out);
    out
}

fn parse_args(args: TokenStream, errors: &mut Errors) -> SagaArgs {
    let mut name = Attr::new("name");
    let mut data = Attr::new("data");
    let mut deadline = Attr::new("deadline");
    let mut krate = Attr::new("crate");
    let parser = syn::meta::parser(|meta| {
        if meta.path.is_ident("name") {
            set_checked_string(&meta, "\"order-fulfilment\"", check_name, &mut name, errors);
        } else if meta.path.is_ident("data") {
            data.set(&meta.path, syntax(&meta, "a type", "OrderData"), errors);
        } else if meta.path.is_ident("deadline") {
            deadline.set(&meta.path, millis(&meta), errors);
        } else if meta.path.is_ident("crate") {
            krate.set(&meta.path, syntax(&meta, "a path", "my_catga"), errors);
        } else {
            errors.push(unknown_key(&meta, "#[saga]", SAGA_KEYS));
            skip_value(&meta);
        }
        Ok(())
    });
    if let Err(e) = syn::parse::Parser::parse2(parser, args) {
        errors.push(e);
    }
    SagaArgs {
        name: name.get(),
        data: data.get(),
        deadline_ms: deadline.get(),
        krate: krate.get().unwrap_or_else(|| syn::parse_quote!(::catga)),
    }
}

fn check_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 100
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok { Ok(()) } else { Err(format!("saga name {name:?} must be 1 to 100 letters, digits, '-', '_' or '.'")) }
}

/// Remove every `#[step(..)]` from the block, parsing it.
fn take_steps(block: &mut ItemImpl, errors: &mut Errors) -> Vec<(syn::Ident, StepArgs)> {
    let mut found = Vec::new();
    for item in &mut block.items {
        let ImplItem::Fn(func) = item else { continue };
        let mut args = None;
        for attr in func.attrs.iter().filter(|a| a.path().is_ident("step")) {
            if args.is_some() {
                errors.at(attr, "`#[step]` is given twice on one function");
                continue;
            }
            args = Some(parse_step(attr, errors));
        }
        func.attrs.retain(|a| !a.path().is_ident("step"));
        if let Some(args) = args {
            found.push((func.sig.ident.clone(), args));
        }
    }
    found
}

fn parse_step(attr: &syn::Attribute, errors: &mut Errors) -> StepArgs {
    let mut compensate = Attr::new("compensate");
    let mut pivot = Attr::new("pivot");
    let mut retry = Attr::new("retry");
    let mut timeout = Attr::new("timeout");
    let mut wait = Attr::new("wait");
    let mut key_field = Attr::new("key");
    let mut within = Attr::new("within");
    if matches!(attr.meta, syn::Meta::Path(_)) {
        return StepArgs {
            compensates: false,
            compensate: None,
            pivot: None,
            retry: None,
            timeout_ms: None,
            wait: None,
            key: None,
            within_ms: None,
        };
    }
    let parsed = attr.parse_nested_meta(|meta| {
        let key = &meta.path;
        if key.is_ident("compensate") {
            let value = read(&meta, "`compensate` names a function: `compensate = refund`", |input| input.parse());
            compensate.set(key, value, errors);
        } else if key.is_ident("pivot") {
            let value = flag(&meta, "`pivot` is a flag: write `#[step(pivot)]`");
            pivot.set(key, value.map(|()| key.get_ident().cloned().unwrap_or_else(|| format_ident!("pivot"))), errors);
        } else if key.is_ident("retry") {
            let value = read(&meta, "`retry` takes a whole number: `retry = 5`", |input| {
                input.parse::<LitInt>()?.base10_parse::<u32>()
            });
            retry.set(key, value, errors);
        } else if key.is_ident("timeout") {
            timeout.set(key, millis(&meta), errors);
        } else if key.is_ident("wait") {
            wait.set(key, syntax(&meta, "an event type", "PaymentConfirmed"), errors);
        } else if key.is_ident("key") {
            let value =
                read(&meta, "`key` names the event's field that holds the saga id: `key = order_id`", |input| {
                    input.parse::<syn::Ident>()
                });
            key_field.set(key, value, errors);
        } else if key.is_ident("within") {
            within.set(key, millis(&meta), errors);
        } else {
            errors.push(unknown_key(&meta, "#[step]", STEP_KEYS));
            skip_value(&meta);
        }
        Ok(())
    });
    if let Err(e) = parsed {
        errors.push(e);
    }
    let (wait, key, within_ms) = (wait.get(), key_field.get(), within.get());
    match (&wait, &key) {
        (Some(ty), None) => errors.at(
            ty,
            "a waiting step names the event's field that holds the saga id: `#[step(wait = Event, key = order_id)]`",
        ),
        (None, Some(k)) => errors.at(k, "`key` goes with `wait = Event`: the field of that event holding the saga id"),
        _ => {}
    }
    if wait.is_none() && within_ms.is_some() {
        errors.at(attr, "`within` goes with `wait = Event`: how long the step waits for it");
    }
    StepArgs {
        compensates: compensate.given(),
        compensate: compensate.get(),
        pivot: pivot.get(),
        retry: retry.get(),
        timeout_ms: timeout.get(),
        wait,
        key,
        within_ms,
    }
}

/// A checked saga, ready to expand.
struct Checked<'a> {
    data: Type,
    steps: Vec<StepFn<'a>>,
    compensations: HashMap<String, &'a ImplItemFn>,
}

fn check<'a>(
    block: &'a ItemImpl,
    args: &SagaArgs,
    parsed: &[(syn::Ident, StepArgs)],
    errors: &mut Errors,
) -> Option<Checked<'a>> {
    if !block.generics.params.is_empty() || block.trait_.is_some() {
        errors.at(&block.self_ty, "#[saga] goes on a plain `impl MySaga { .. }` block: no generics, no trait");
    }
    let fns: HashMap<String, &ImplItemFn> = block
        .items
        .iter()
        .filter_map(|i| match i {
            ImplItem::Fn(f) => Some((f.sig.ident.to_string(), f)),
            _ => None,
        })
        .collect();
    if parsed.is_empty() {
        errors.at(
            &block.self_ty,
            "a saga needs at least one step: mark its functions `#[step(compensate = undo)]`, `#[step(pivot)]` or \
             `#[step]`",
        );
        return None;
    }

    let mut names = std::collections::HashSet::new();
    for (ident, _) in parsed {
        if !names.insert(ident.to_string()) {
            errors.at(
                ident,
                format!(
                    "duplicate step `{ident}`: a step's name identifies it in the saga's persisted history; rename one"
                ),
            );
        }
    }
    if !errors.is_empty() {
        return None;
    }
    let mut steps = Vec::new();
    let mut pivot: Option<&syn::Ident> = None;
    let mut first_retriable: Option<&syn::Ident> = None;
    let mut used: HashMap<String, &syn::Ident> = HashMap::new();
    let mut compensations = HashMap::new();
    for (ident, step_args) in parsed {
        let func = fns[&ident.to_string()];
        check_fn(func, "step", "&mut ", step_args.wait.is_some(), errors);
        // A `compensate` with a malformed value still makes the step
        // compensatable, so it does not also break the order rules.
        let kind = match (step_args.compensates, &step_args.pivot) {
            (true, Some(p)) => {
                errors.at(p, "a pivot has no compensation: it is the point of no return; drop `compensate` or `pivot`");
                StepKind::Pivot
            }
            (true, None) => StepKind::Compensatable,
            (false, Some(_)) => StepKind::Pivot,
            (false, None) => StepKind::Retriable,
        };
        match kind {
            StepKind::Compensatable => {
                if let Some(p) = pivot {
                    errors.at(
                        ident,
                        format!(
                            "compensatable step `{ident}` comes after the pivot `{p}`; nothing past the pivot is \
                             undone: move it before `{p}`, or drop its `compensate`"
                        ),
                    );
                } else if let Some(r) = first_retriable {
                    errors.at(
                        r,
                        format!(
                            "step `{r}` has no compensation but comes before the compensatable step `{ident}`; a step \
                             that cannot be undone must come after every step that can: give `{r}` a \
                             `compensate = ..`, or move it after `{ident}`"
                        ),
                    );
                }
            }
            StepKind::Pivot => {
                if let Some(p) = pivot {
                    errors.at(ident, format!("a saga has at most one pivot; `{p}` is already the pivot"));
                } else if let Some(r) = first_retriable {
                    errors.at(
                        r,
                        format!(
                            "step `{r}` comes before the pivot `{ident}` but has no compensation; steps before the \
                             pivot must be undoable: add `compensate = ..` to `{r}`"
                        ),
                    );
                }
                pivot.get_or_insert(ident);
            }
            StepKind::Retriable => {
                first_retriable.get_or_insert(ident);
            }
        }
        if let Some(target) = &step_args.compensate {
            let name = target.to_string();
            if let Some(first) = used.insert(name.clone(), ident) {
                errors.at(
                    target,
                    format!(
                        "`{target}` already compensates step `{first}`; each step needs its own compensation (one \
                         function for two steps would run twice and could not tell which step it undoes)"
                    ),
                );
            }
            match fns.get(&name) {
                None => errors.at(
                    target,
                    format!(
                        "no function `{target}` in this saga; write it in this impl block: \
                         `async fn {target}(data: &Data, ctx: &SagaContext) -> Result<(), StepError>`"
                    ),
                ),
                Some(comp) if parsed.iter().any(|(s, _)| *s == name) => {
                    errors.at(target, format!("`{target}` is a step; a compensation is a function without `#[step]`"));
                    let _ = comp;
                }
                Some(comp) => {
                    check_fn(comp, "compensation", "&", false, errors);
                    compensations.insert(name, *comp);
                }
            }
        }
        steps.push(StepFn {
            func,
            args: StepArgs {
                compensates: step_args.compensates,
                compensate: step_args.compensate.clone(),
                pivot: step_args.pivot.clone(),
                retry: step_args.retry,
                timeout_ms: step_args.timeout_ms,
                wait: step_args.wait.clone(),
                key: step_args.key.clone(),
                within_ms: step_args.within_ms,
            },
            kind,
        });
    }
    // The data type: given, or read off the first step's `&mut Data`.
    let data = args.data.clone().or_else(|| data_param(steps[0].func, true).cloned());
    let Some(data) = data else {
        errors.at(&steps[0].func.sig.ident, "cannot tell the saga's data type: add `data = MyData` to #[saga]");
        return None;
    };
    if !errors.is_empty() {
        return None;
    }
    Some(Checked { data, steps, compensations })
}

/// The shape every step and compensation has:
/// `async fn name(data: &mut Data | &Data, ctx: &SagaContext) -> Result<(), E>`;
/// a waiting step takes the event between them (by value).
fn check_fn(func: &ImplItemFn, what: &str, data_ref: &str, waits: bool, errors: &mut Errors) {
    let sig = &func.sig;
    let name = &sig.ident;
    let event = if waits { "event: Event, " } else { "" };
    let expected =
        format!("`async fn {name}(data: {data_ref}Data, {event}ctx: &SagaContext) -> Result<(), StepError>`");
    if sig.asyncness.is_none() {
        errors.at(sig.fn_token, format!("a saga {what} must be an `async fn`: {expected}"));
    }
    if !sig.generics.params.is_empty() {
        errors.at(&sig.generics, format!("a saga {what} cannot be generic: {expected}"));
    }
    let mut typed = Vec::new();
    for arg in &sig.inputs {
        match arg {
            FnArg::Receiver(r) => errors.at(r, format!("a saga {what} takes no `self`: {expected}")),
            FnArg::Typed(t) => typed.push(&*t.ty),
        }
    }
    let wanted = if waits { 3 } else { 2 };
    if typed.len() != wanted {
        let span = if sig.inputs.is_empty() { sig.paren_token.span.join() } else { sig.inputs.span() };
        let takes = if waits { "the data, the event and the context" } else { "the data and the context" };
        errors.span(span, format!("a saga {what} takes {takes} ({} given): {expected}", typed.len()));
        return;
    }
    if waits {
        if let Type::Reference(r) = typed[1] {
            errors.at(r, format!("a waiting step takes the event by value: {expected}"));
        }
        typed.remove(1);
    }
    let mutable = data_ref.starts_with("&mut");
    match typed[0] {
        Type::Reference(TypeReference { mutability, .. }) if mutability.is_some() == mutable => {}
        other => errors.at(other, format!("a saga {what} takes the data as `{data_ref}Data`: {expected}")),
    }
    if !matches!(typed[1], Type::Reference(TypeReference { mutability: None, .. })) {
        errors.at(typed[1], format!("a saga {what} takes the context as `&SagaContext`: {expected}"));
    }
    if let ReturnType::Default = sig.output {
        errors.at(name, format!("a saga {what} returns a `Result`: {expected}"));
    }
}

/// `Data` in a first parameter `&mut Data` (steps) or `&Data`.
fn data_param(func: &ImplItemFn, mutable: bool) -> Option<&Type> {
    let Some(FnArg::Typed(t)) = func.sig.inputs.first() else { return None };
    match &*t.ty {
        Type::Reference(r) if r.mutability.is_some() == mutable => Some(&r.elem),
        _ => None,
    }
}

/// The referenced type of parameter `index` (`Data` in `&mut Data`).
fn ref_param(func: &ImplItemFn, index: usize) -> Option<&Type> {
    match func.sig.inputs.iter().nth(index) {
        Some(FnArg::Typed(t)) => match &*t.ty {
            Type::Reference(r) => Some(&r.elem),
            _ => None,
        },
        _ => None,
    }
}

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

fn expand_table(block: &ItemImpl, args: &SagaArgs, c: Checked) -> TokenStream {
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
