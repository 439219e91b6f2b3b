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

const SAGA_KEYS: &[&str] = &["name", "data", "crate"];
const STEP_KEYS: &[&str] = &["compensate", "pivot", "retry", "timeout"];

struct SagaArgs {
    name: Option<LitStr>,
    data: Option<Type>,
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
    let mut krate = Attr::new("crate");
    let parser = syn::meta::parser(|meta| {
        if meta.path.is_ident("name") {
            set_checked_string(&meta, "\"order-fulfilment\"", check_name, &mut name, errors);
        } else if meta.path.is_ident("data") {
            data.set(&meta.path, syntax(&meta, "a type", "OrderData"), errors);
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
    SagaArgs { name: name.get(), data: data.get(), krate: krate.get().unwrap_or_else(|| syn::parse_quote!(::catga)) }
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
    if matches!(attr.meta, syn::Meta::Path(_)) {
        return StepArgs { compensates: false, compensate: None, pivot: None, retry: None, timeout_ms: None };
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
        } else {
            errors.push(unknown_key(&meta, "#[step]", STEP_KEYS));
            skip_value(&meta);
        }
        Ok(())
    });
    if let Err(e) = parsed {
        errors.push(e);
    }
    StepArgs {
        compensates: compensate.given(),
        compensate: compensate.get(),
        pivot: pivot.get(),
        retry: retry.get(),
        timeout_ms: timeout.get(),
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
        check_fn(func, "step", "&mut ", errors);
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
                    check_fn(comp, "compensation", "&", errors);
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
/// `async fn name(data: &mut Data | &Data, ctx: &SagaContext) -> Result<(), E>`.
fn check_fn(func: &ImplItemFn, what: &str, data_ref: &str, errors: &mut Errors) {
    let sig = &func.sig;
    let name = &sig.ident;
    let expected = format!("`async fn {name}(data: {data_ref}Data, ctx: &SagaContext) -> Result<(), StepError>`");
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
    if typed.len() != 2 {
        let span = if sig.inputs.is_empty() { sig.paren_token.span.join() } else { sig.inputs.span() };
        errors.span(span, format!("a saga {what} takes the data and the context ({} given): {expected}", typed.len()));
        return;
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
    let ctx_ty = quote!(#krate::saga::SagaContext);
    let result_ty = quote!(#private::BoxFuture<'__catga, ::core::result::Result<(), #krate::saga::StepError>>);

    let mut items = Vec::new();
    let mut rows = Vec::new();
    for step in &c.steps {
        let ident = &step.func.sig.ident;
        let thunk = format_ident!("__catga_step_{}", ident);
        // The data parameter is checked against the saga's data type where
        // the user wrote it.
        let param = data_param(step.func, true).map(|ty| quote_spanned!(ty.span()=> let _: &mut #ty = __catga_data;));
        let check_fn = format_ident!("__catga_check_{}", ident);
        let call = quote_spanned!(ident.span()=> #private::saga_step(<#self_ty>::#ident(__catga_data, __catga_ctx)));
        items.push(quote! {
            #[allow(dead_code, clippy::all)]
            fn #check_fn(__catga_data: &mut #data) {
                #param
            }
            fn #thunk<'__catga>(__catga_data: &'__catga mut #data, __catga_ctx: &'__catga #ctx_ty) -> #result_ty {
                #call
            }
        });
        let kind = match step.kind {
            StepKind::Compensatable => quote!(Compensatable),
            StepKind::Pivot => quote!(Pivot),
            StepKind::Retriable => quote!(Retriable),
        };
        let compensation = match &step.args.compensate {
            Some(comp) => {
                let comp_thunk = format_ident!("__catga_compensate_{}", comp);
                let comp_check = format_ident!("__catga_check_{}", comp);
                let comp_fn = c.compensations[&comp.to_string()];
                let param =
                    data_param(comp_fn, false).map(|ty| quote_spanned!(ty.span()=> let _: &#ty = __catga_data;));
                let comp_ident = &comp_fn.sig.ident;
                let call = quote_spanned!(comp.span()=> #private::saga_step(<#self_ty>::#comp_ident(__catga_data, __catga_ctx)));
                items.push(quote! {
                    #[allow(dead_code, clippy::all)]
                    fn #comp_check(__catga_data: &#data) {
                        #param
                    }
                    fn #comp_thunk<'__catga>(__catga_data: &'__catga #data, __catga_ctx: &'__catga #ctx_ty) -> #result_ty {
                        #call
                    }
                });
                let comp_name = LitStr::new(&comp.to_string(), comp.span());
                quote!(::core::option::Option::Some((#comp_name, #comp_thunk)))
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
        rows.push(quote! {
            #private::SagaStep {
                name: #step_name,
                kind: #private::SagaStepKind::#kind,
                run: #thunk,
                compensation: #compensation,
                retry: #retry,
                timeout_ms: #timeout,
            }
        });
    }
    let n = rows.len();
    let data_check = quote_spanned!(data.span()=> #private::assert_saga_data::<#data>(););
    let line = quote_spanned!(self_ty.span()=> ::core::line!());
    quote! {
        #[doc(hidden)]
        const _: () = {
            #[allow(dead_code, clippy::all)]
            fn __catga_checks() {
                #data_check
            }

            #(#items)*

            static __CATGA_STEPS: [#private::SagaStep<#data>; #n] = [#(#rows),*];

            static __CATGA_SAGA: #private::SagaDef<#data> = #private::SagaDef {
                name: #name,
                steps: &__CATGA_STEPS,
                data_type: ::core::any::type_name::<#data>,
                file: ::core::file!(),
                line: #line,
            };

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
                    entry: &__CATGA_SAGA,
                }
            }
        };
    }
}
