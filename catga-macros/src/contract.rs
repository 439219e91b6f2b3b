//! `#[derive(Command)]` and `#[derive(Event)]` with `#[catga(...)]`: the
//! message contract — subject (checked as a NATS subject), reply type,
//! codec, validation hook, durability.

use proc_macro2::{Span, TokenStream};
use quote::{ToTokens, quote};
use syn::{DeriveInput, LitStr, Path, Type};

use crate::attr::{Attr, Errors, flag, set_checked_string, skip_value, syntax, unknown_key};
use crate::subject::check_publish_subject;

#[derive(Clone, Copy, PartialEq)]
pub(crate) enum Kind {
    Command,
    Event,
}

impl Kind {
    fn derive(self) -> &'static str {
        match self {
            Kind::Command => "#[derive(Command)]",
            Kind::Event => "#[derive(Event)]",
        }
    }

    fn keys(self) -> &'static [&'static str] {
        match self {
            Kind::Command => &["subject", "reply", "codec", "validate", "durable", "crate"],
            Kind::Event => &["subject", "codec", "validate", "durable", "crate"],
        }
    }

    fn example(self) -> &'static str {
        match self {
            Kind::Command => "#[catga(subject = \"orders.create\", reply = OrderAccepted)]",
            Kind::Event => "#[catga(subject = \"orders.created\")]",
        }
    }
}

struct Contract {
    subject: Option<LitStr>,
    reply: Option<Type>,
    codec: Option<Type>,
    /// `codec` was given, with a value of the wrong form.
    codec_broken: bool,
    validate: bool,
    durable: bool,
    krate: Path,
}

pub(crate) fn expand(kind: Kind, input: TokenStream) -> TokenStream {
    let input: DeriveInput = match syn::parse2(input) {
        Ok(input) => input,
        Err(e) => return e.to_compile_error(),
    };
    let mut errors = Errors::default();
    let contract = parse(kind, &input, &mut errors);
    // The impls come out even next to an error, so that a contract with a
    // mistake does not also break every handler and sender of the type.
    let out = generate(kind, &input, &contract, &errors);
    crate::debug_print(kind.derive(), &out);
    out
}

fn parse(kind: Kind, input: &DeriveInput, errors: &mut Errors) -> Contract {
    let mut subject = Attr::new("subject");
    let mut reply = Attr::new("reply");
    let mut codec = Attr::new("codec");
    let mut validate = Attr::new("validate");
    let mut durable = Attr::new("durable");
    let mut krate = Attr::new("crate");
    let mut found = false;
    for attr in input.attrs.iter().filter(|a| a.path().is_ident("catga")) {
        found = true;
        let parsed = attr.parse_nested_meta(|meta| {
            let key = &meta.path;
            if key.is_ident("subject") {
                set_checked_string(&meta, "\"orders.create\"", check_publish_subject, &mut subject, errors);
            } else if key.is_ident("reply") && kind == Kind::Command {
                reply.set(key, syntax(&meta, "a type", "OrderAccepted"), errors);
            } else if key.is_ident("codec") {
                codec.set(key, syntax(&meta, "a type", "catga::Json"), errors);
            } else if key.is_ident("validate") {
                let value = flag(&meta, "`validate` is a flag: write `validate` and implement `catga::Validate`");
                validate.set(key, value, errors);
            } else if key.is_ident("durable") {
                // One form only: the bare flag. `durable = true` would invite
                // `durable = false`, which says nothing the absence does not.
                let value = flag(
                    &meta,
                    "`durable` is a flag: write `durable` (no value) to deliver this message through JetStream, \
                     or leave it out for at-most-once core NATS",
                );
                durable.set(key, value, errors);
            } else if key.is_ident("crate") {
                krate.set(key, syntax(&meta, "a path", "my_catga"), errors);
            } else {
                let what = format!("#[catga] of {}", kind.derive());
                let mut e = unknown_key(&meta, &what, kind.keys());
                if key.is_ident("reply") {
                    e = meta.error("events have no reply; `reply` belongs on #[derive(Command)]");
                }
                errors.push(e);
                skip_value(&meta);
            }
            Ok(())
        });
        if let Err(e) = parsed {
            errors.push(e);
        }
    }
    let ident = &input.ident;
    if !found {
        errors.at(ident, format!("{} needs a contract attribute: {}", kind.derive(), kind.example()));
    } else {
        if !subject.given() {
            errors.at(ident, format!("{} needs a subject: {}", kind.derive(), kind.example()));
        }
        if kind == Kind::Command && !reply.given() {
            errors.at(
                ident,
                format!("{} needs a reply type (use `reply = ()` for none): {}", kind.derive(), kind.example()),
            );
        }
    }
    let codec_broken = codec.given() && codec.as_ref().is_none();
    Contract {
        subject: subject.get(),
        reply: reply.get(),
        codec: codec.get(),
        codec_broken,
        validate: validate.get().is_some(),
        durable: durable.get().is_some(),
        krate: krate.get().unwrap_or_else(|| syn::parse_quote!(::catga)),
    }
}

fn generate(kind: Kind, input: &DeriveInput, c: &Contract, errors: &Errors) -> TokenStream {
    let krate = &c.krate;
    let ident = &input.ident;
    let (impl_generics, ty_generics, where_clause) = input.generics.split_for_impl();
    // Every error of the contract is reported once, by this const. A part
    // that is missing or malformed becomes a value derived from it, which
    // rustc treats as an error already reported: no handler, sender or
    // check of the type reports it again.
    let error = (!errors.is_empty()).then(|| {
        let errors = errors.to_compile_errors();
        quote!(#[allow(dead_code)] const __CATGA_CONTRACT_ERROR: () = { #errors };)
    });
    let error_type = quote!(
        [(); {
            let () = __CATGA_CONTRACT_ERROR;
            0
        }]
    );
    let subject = match &c.subject {
        // An invalid subject still yields an impl (with the error beside it).
        Some(subject) => LitStr::new(&subject.value(), Span::call_site()).into_token_stream(),
        None => quote!({
            let () = __CATGA_CONTRACT_ERROR;
            ""
        }),
    };
    let codec = match &c.codec {
        Some(t) => quote!(#t),
        None if c.codec_broken => error_type.clone(),
        None => quote!(#krate::Json),
    };
    let validate = c.validate.then(|| {
        quote! {
            fn validate(&self) -> ::core::result::Result<(), #krate::HandlerError> {
                <Self as #krate::Validate>::validate(self)
            }
        }
    });
    let durable = c.durable.then(|| {
        quote!(
            const DURABLE: bool = true;
        )
    });
    let message = quote! {
        #[automatically_derived]
        impl #impl_generics #krate::Message for #ident #ty_generics #where_clause {
            const SUBJECT: &'static str = #subject;
            type Codec = #codec;
            #durable
            #validate
        }
    };
    // `Command`/`Event` restate their supertrait `Message` as a where-clause:
    // it holds whenever the `Message` impl above exists (always), and it
    // keeps a type that misses `Serialize` from being reported a second time
    // here. Higher-ranked, so that rustc takes it as an assumption rather
    // than a "trivial bound" it refuses.
    let mut extended = where_clause.cloned().unwrap_or_else(|| syn::parse_quote!(where));
    extended.predicates.push(syn::parse_quote!(for<'__catga> #ident #ty_generics: #krate::Message));
    let specific = match kind {
        Kind::Command => {
            let reply = c.reply.as_ref().map(|t| quote!(#t)).unwrap_or(error_type);
            quote! {
                #[automatically_derived]
                impl #impl_generics #krate::Command for #ident #ty_generics #extended {
                    type Reply = #reply;
                }
            }
        }
        Kind::Event => quote! {
            #[automatically_derived]
            impl #impl_generics #krate::Event for #ident #ty_generics #extended {}
        },
    };
    quote! {
        #[doc(hidden)]
        const _: () = {
            #error
            #message
            #specific
        };
    }
}
