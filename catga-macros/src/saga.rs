//! `#[saga]` on the `impl` block that holds every step and compensation of a
//! saga: parse the block, check the steps and compensations together (the
//! classic order, compensations that exist with the right shape, each used
//! once), and expand to the block (with `#[step]` removed) plus a static
//! step table registered with `inventory` ([`expand`]).

use std::collections::HashMap;

use proc_macro2::{Span, TokenStream};
use quote::{format_ident, quote};
use syn::spanned::Spanned;
use syn::{FnArg, ImplItem, ImplItemFn, ItemImpl, LitInt, LitStr, Path, ReturnType, Type, TypeReference};

mod expand;

use crate::attr::{Attr, Errors, flag, millis, read, set_checked_string, skip_value, syntax, unknown_key};
use expand::expand_table;

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
